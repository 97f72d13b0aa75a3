/**
 * Allocations planned without changing the state they read:
 * {@linkcode IpamDraft} reads through to an {@linkcode IpamReader} and keeps
 * its own writes, so an allocator can run over it and whoever owns the state
 * commits the result ({@linkcode IpamDraft.changes}, then
 * {@linkcode applyIpamChanges}) or drops it. The cluster store's rules plan
 * this way and each engine commits in its own form.
 */
import type { IpamReader, IpamStore } from "./store.ts";

/** What a draft changed, net. */
export interface IpamChanges {
  /** Bindings of the base the draft removed or replaced: index → owner. */
  readonly unbound: ReadonlyMap<bigint, string>;
  /** Bindings the draft made: index → owner. */
  readonly bound: ReadonlyMap<bigint, string>;
  /** How many indices the draft took off the front of the base's released list. */
  readonly popped: number;
  /** Indices the draft released, oldest first (they go after the base's). */
  readonly pushed: readonly bigint[];
  /** The new cursor, when the draft moved it. */
  readonly cursor: bigint | undefined;
}

/** True when applying `c` would change nothing. */
export function noIpamChanges(c: IpamChanges): boolean {
  return c.unbound.size === 0 && c.bound.size === 0 && c.popped === 0 && c.pushed.length === 0 &&
    c.cursor === undefined;
}

/** An {@linkcode IpamStore} whose writes stay in the draft, over a base it only reads. */
export class IpamDraft implements IpamStore {
  readonly #base: IpamReader;
  /** owner → index, or null where the draft removed the base's binding. */
  readonly #byOwner = new Map<string, bigint | null>();
  /** index → owner, or null where the draft removed the base's binding. */
  readonly #byIndex = new Map<bigint, string | null>();
  #baseReleased: Iterator<bigint> | undefined;
  #popped = 0;
  readonly #pushed = new Map<bigint, true>();
  #cursor: bigint | undefined;
  #count = 0;

  constructor(base: IpamReader) {
    this.#base = base;
  }

  indexOf(owner: string): bigint | undefined {
    const i = this.#byOwner.get(owner);
    return i === undefined ? this.#base.indexOf(owner) : i ?? undefined;
  }

  ownerAt(index: bigint): string | undefined {
    const o = this.#byIndex.get(index);
    return o === undefined ? this.#base.ownerAt(index) : o ?? undefined;
  }

  bind(owner: string, index: bigint): void {
    if (this.indexOf(owner) === undefined) this.#count++;
    this.#byOwner.set(owner, index);
    this.#byIndex.set(index, owner);
    this.#pushed.delete(index);
  }

  unbind(owner: string): bigint | undefined {
    const i = this.indexOf(owner);
    if (i === undefined) return undefined;
    this.#byOwner.set(owner, null);
    this.#byIndex.set(i, null);
    this.#count--;
    return i;
  }

  pushReleased(index: bigint): void {
    this.#pushed.delete(index);
    this.#pushed.set(index, true);
  }

  popReleased(): bigint | undefined {
    this.#baseReleased ??= this.#base.released()[Symbol.iterator]();
    for (let n = this.#baseReleased.next(); !n.done; n = this.#baseReleased.next()) {
      this.#popped++;
      // Bound or released again in this draft: no longer where the base has it.
      if (!this.#byIndex.has(n.value)) return n.value;
    }
    for (const i of this.#pushed.keys()) {
      this.#pushed.delete(i);
      return i;
    }
    return undefined;
  }

  *released(): Iterable<bigint> {
    let skip = this.#popped;
    for (const i of this.#base.released()) {
      if (skip > 0) skip--;
      else if (!this.#byIndex.has(i)) yield i;
    }
    yield* this.#pushed.keys();
  }

  cursor(): bigint {
    return this.#cursor ?? this.#base.cursor();
  }

  setCursor(cursor: bigint): void {
    this.#cursor = cursor;
  }

  count(): number {
    return this.#base.count() + this.#count;
  }

  list(): { owner: string; index: bigint }[] {
    const kept = this.#base.list().filter((e) => !this.#byOwner.has(e.owner));
    const mine = [...this.#byOwner].filter((e): e is [string, bigint] => e[1] !== null);
    return [...kept, ...mine.map(([owner, index]) => ({ owner, index }))];
  }

  /** What committing this draft changes in its base. */
  changes(): IpamChanges {
    const unbound = new Map<bigint, string>();
    const bound = new Map<bigint, string>();
    for (const [owner, index] of this.#byOwner) {
      const before = this.#base.indexOf(owner);
      if (before !== undefined && before !== index) unbound.set(before, owner);
    }
    for (const [index, owner] of this.#byIndex) {
      const before = this.#base.ownerAt(index);
      if (before !== undefined && before !== owner) unbound.set(index, before);
      if (owner !== null && before !== owner) bound.set(index, owner);
    }
    return {
      unbound,
      bound,
      popped: this.#popped,
      pushed: [...this.#pushed.keys()],
      cursor: this.#cursor,
    };
  }
}

/** Commits a draft's changes to the store it was planned over (or a copy of it). */
export function applyIpamChanges(store: IpamStore, changes: IpamChanges): void {
  for (const owner of changes.unbound.values()) store.unbind(owner);
  for (let k = 0; k < changes.popped; k++) store.popReleased();
  for (const [index, owner] of changes.bound) store.bind(owner, index);
  for (const index of changes.pushed) store.pushReleased(index);
  if (changes.cursor !== undefined) store.setCursor(changes.cursor);
}
