/**
 * What an allocator keeps: owner ↔ index bindings, released indices in
 * release order, and the cursor of never-used indices. Synchronous, so one
 * allocation is atomic within a turn of the event loop and can join the
 * caller's database transaction.
 */

/** The read half of an {@linkcode IpamStore}: what planning an allocation looks at. */
export interface IpamReader {
  indexOf(owner: string): bigint | undefined;
  ownerAt(index: bigint): string | undefined;
  /** Released indices, the longest released first. */
  released(): Iterable<bigint>;
  /** Next never-used index. */
  cursor(): bigint;
  /** Number of bindings. */
  count(): number;
  /** Every binding. */
  list(): { owner: string; index: bigint }[];
}

export interface IpamStore extends IpamReader {
  /** Binds owner to index (and takes the index off the released list). */
  bind(owner: string, index: bigint): void;
  /** Removes the owner's binding; returns its index. */
  unbind(owner: string): bigint | undefined;
  /** Appends a released index (newest last). */
  pushReleased(index: bigint): void;
  /** Takes the longest-released index. */
  popReleased(): bigint | undefined;
  setCursor(cursor: bigint): void;
}

/** An in-memory store (tests, and anything that persists elsewhere). */
export class MemoryIpamStore implements IpamStore {
  readonly #byOwner = new Map<string, bigint>();
  readonly #byIndex = new Map<bigint, string>();
  /** Insertion order is release order: the first key is the longest idle. */
  readonly #released = new Map<bigint, true>();
  #cursor = 0n;

  indexOf(owner: string) {
    return this.#byOwner.get(owner);
  }
  ownerAt(index: bigint) {
    return this.#byIndex.get(index);
  }
  bind(owner: string, index: bigint) {
    this.#byOwner.set(owner, index);
    this.#byIndex.set(index, owner);
    this.#released.delete(index);
  }
  unbind(owner: string) {
    const i = this.#byOwner.get(owner);
    if (i === undefined) return undefined;
    this.#byOwner.delete(owner);
    this.#byIndex.delete(i);
    return i;
  }
  pushReleased(index: bigint) {
    this.#released.delete(index);
    this.#released.set(index, true);
  }
  popReleased() {
    for (const i of this.#released.keys()) {
      this.#released.delete(i);
      return i;
    }
    return undefined;
  }
  released() {
    return this.#released.keys();
  }
  cursor() {
    return this.#cursor;
  }
  setCursor(cursor: bigint) {
    this.#cursor = cursor;
  }
  count() {
    return this.#byOwner.size;
  }
  list() {
    return [...this.#byOwner].map(([owner, index]) => ({ owner, index }));
  }
}
