/**
 * The node's mesh peers (other nodes and external clients) on its WireGuard
 * interface, kept in step with the cluster one peer at a time: a snapshot is
 * applied as a diff against what the interface has, each delta as one `wg
 * set` planned in time independent of the number of peers (refusals
 * included: see {@linkcode Admission}). The interface is never replaced; pod
 * peers are never touched.
 */
import type { PeerEntry, WatchEvent } from "../../lib/api/cluster_types.ts";
import type { Logger } from "../../lib/log.ts";
import {
  isKey,
  isLowOrderKey,
  type Peer,
  type PeerState,
  type WireGuardControl,
} from "../../lib/wireguard/mod.ts";
import { parseEndpoint } from "../../lib/api/schemas.ts";
import { lastAddress, parseCidr } from "../../lib/ipam/mod.ts";

/** Peers per `wg set` when a snapshot is applied. */
export const RESYNC_BATCH = 200;

/**
 * How long, from the moment of a peer's key switch, this node waits for that
 * peer's first handshake under its next key before it moves the allowed IPs
 * anyway (see `Mesh`).
 */
export const SWITCH_WAIT_MS = 3_000;

/** How often a switch looks for that handshake. */
const SWITCH_POLL_MS = 2;

/** New node peers primed at most per change (see {@linkcode Mesh}'s `prime`). */
export const PRIME_LIMIT = 32;

/** One change to the interface. */
export type PeerOp =
  | { readonly op: "set"; readonly peer: Peer; readonly name: string }
  | { readonly op: "remove"; readonly publicKey: string; readonly name?: string };

/** Why a peer from the cluster was not applied. */
export interface Refusal {
  readonly name: string;
  readonly publicKey: string;
  readonly reason: string;
}

/** What this node must never let a peer claim. */
export interface Self {
  readonly name: string;
  readonly publicKey: string;
  readonly subnets: readonly string[];
  /** This node is behind NAT: it keeps its NAT's mappings open toward every node. */
  readonly nat?: boolean;
}

/**
 * Seconds between keep-alives a node behind NAT sends each node peer: well
 * inside the shortest UDP mapping timeouts NATs use (30 s and up).
 */
export const NAT_KEEPALIVE_S = 25;

/** An address range claimed by a peer (or this node). */
interface Claim {
  readonly lo: bigint;
  readonly hi: bigint;
  readonly cidr: string;
  readonly name: string;
}

/**
 * Claimed ranges of one family, kept disjoint and sorted by start, so the
 * overlap check of a new range is a binary search: thousands of peers stay
 * cheap.
 */
class Claims<C extends Claim = Claim> {
  readonly #ranges: C[] = [];

  /** The claimed range overlapping [lo, hi], if any. */
  overlap(lo: bigint, hi: bigint): C | undefined {
    const c = this.#ranges[this.#from(lo)];
    return c !== undefined && c.lo <= hi ? c : undefined;
  }

  /** Every claimed range overlapping [lo, hi] (adjacent, the ranges being disjoint). */
  overlapping(lo: bigint, hi: bigint): C[] {
    const r = this.#ranges;
    const found: C[] = [];
    for (let i = this.#from(lo); i < r.length && (r[i] as C).lo <= hi; i++) found.push(r[i] as C);
    return found;
  }

  /** Adds a range known not to overlap any claimed one. */
  add(c: C): void {
    this.#ranges.splice(this.#at(c.lo), 0, c);
  }

  /** Removes a range added before (the same object). */
  remove(c: C): void {
    const i = this.#at(c.lo);
    if (this.#ranges[i] === c) this.#ranges.splice(i, 1);
  }

  /** The index of the first range ending at or after `lo`. */
  #from(lo: bigint): number {
    return this.#first((c) => c.hi >= lo);
  }

  /** The index of the first range starting at or after `lo`. */
  #at(lo: bigint): number {
    return this.#first((c) => c.lo >= lo);
  }

  /** The index of the first range `past` holds for (false before it, true from it on). */
  #first(past: (c: C) => boolean): number {
    const r = this.#ranges;
    let a = 0, b = r.length;
    while (a < b) {
      const m = (a + b) >> 1;
      if (past(r[m] as C)) b = m;
      else a = m + 1;
    }
    return a;
  }
}

/** Claimed ranges per family. */
type FamilyClaims<C extends Claim = Claim> = { readonly 4: Claims<C>; readonly 6: Claims<C> };

/** A family-tagged claim of one peer, with the peer's public key. */
type PeerClaim = Claim & { readonly family: 4 | 6; readonly key: string };

/** This node's own subnets as claims. */
function ownClaims(self: Self): FamilyClaims {
  const own = { 4: new Claims(), 6: new Claims() };
  for (const s of self.subnets) {
    const c = parseCidr(s);
    own[c.family].add({ lo: c.base, hi: lastAddress(c), cidr: s, name: self.name });
  }
  return own;
}

/**
 * The order in which entries claim ranges: by name, then kind, then public
 * key, so the choice between overlapping entries is the same on every node
 * whatever order the cluster sent them in.
 */
function compareEntries(a: PeerEntry, b: PeerEntry): number {
  return cmp(a.name, b.name) || cmp(a.kind, b.kind) || cmp(a.publicKey, b.publicKey);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** How an entry stood before a change: the peer applied for it, and why it was refused. */
export interface Standing {
  readonly peer: PeerEntry | undefined;
  readonly refusal: string | undefined;
}

/** Entries' public keys waiting for a decision, earliest in claim order first (a binary heap). */
class Queue {
  readonly #heap: string[] = [];
  readonly #queued = new Set<string>();
  readonly #entries: ReadonlyMap<string, PeerEntry>;

  constructor(entries: ReadonlyMap<string, PeerEntry>) {
    this.#entries = entries;
  }

  /** Queues a key once; keys no longer among the entries are skipped. */
  push(key: string): void {
    if (this.#queued.has(key) || !this.#entries.has(key)) return;
    this.#queued.add(key);
    const h = this.#heap;
    let i = h.push(key) - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#before(key, h[p] as string)) break;
      h[i] = h[p] as string;
      i = p;
    }
    h[i] = key;
  }

  /** The earliest queued key, taken off the queue. */
  pop(): string | undefined {
    const h = this.#heap;
    const top = h[0];
    if (top === undefined) return undefined;
    this.#queued.delete(top);
    const last = h.pop() as string;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= h.length) break;
        if (c + 1 < h.length && this.#before(h[c + 1] as string, h[c] as string)) c++;
        if (!this.#before(h[c] as string, last)) break;
        h[i] = h[c] as string;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }

  #before(a: string, b: string): boolean {
    const x = this.#entries.get(a) as PeerEntry, y = this.#entries.get(b) as PeerEntry;
    return compareEntries(x, y) < 0;
  }
}

/**
 * Which of the cluster's entries are peers, kept between events. An entry is
 * a peer unless it is this node, or an AllowedIP of it is invalid, overlaps
 * this node's subnets, another of its own, or a peer earlier in claim order
 * ({@linkcode compareEntries}). So the result depends on the entries only,
 * never on the order of events, and equals a plan over all of them at once.
 *
 * A change re-decides only the entries it can affect, in claim order: the
 * changed entries, the later peers a newly accepted entry overlaps (they
 * give way), and the entries refused because of a peer that went or gave
 * way (each refused entry remembers one such peer; while that peer stays,
 * the entry stays refused). Adding, changing or removing one entry thus
 * costs the overlap checks of its own ranges, independent of how many peers
 * there are, unless it displaces or frees others.
 */
export class Admission {
  readonly #self: Self;
  readonly #own: FamilyClaims;
  /** The cluster's view, by public key (this node and refused entries included). */
  readonly #entries = new Map<string, PeerEntry>();
  /** The peers, by public key, with their ranges: by key, and per family for overlap checks. */
  readonly #peers = new Map<string, PeerEntry>();
  readonly #claims = new Map<string, PeerClaim[]>();
  readonly #claimed: FamilyClaims<PeerClaim> = { 4: new Claims(), 6: new Claims() };
  /**
   * Refused entries by public key; the peer refusing each (none for a fault
   * of its own), and the reverse.
   */
  readonly #refused = new Map<string, Refusal>();
  readonly #refusedBy = new Map<string, string>();
  readonly #refuses = new Map<string, Set<string>>();
  readonly #queue = new Queue(this.#entries);
  /** How the entries touched by the change under way stood before it. */
  #before = new Map<string, Standing>();

  constructor(self: Self) {
    this.#self = self;
    this.#own = ownClaims(self);
  }

  /** The cluster's entries by public key. */
  get entries(): ReadonlyMap<string, PeerEntry> {
    return this.#entries;
  }

  /** The accepted entries (the peers to have) by public key. */
  get peers(): ReadonlyMap<string, PeerEntry> {
    return this.#peers;
  }

  /** The refused entries, in claim order. */
  get refused(): Refusal[] {
    const at = (r: Refusal) => this.#entries.get(r.publicKey) as PeerEntry;
    return [...this.#refused.values()].sort((a, b) => compareEntries(at(a), at(b)));
  }

  /** Why the entry of that key is refused, if it is. */
  refusal(publicKey: string): string | undefined {
    return this.#refused.get(publicKey)?.reason;
  }

  /**
   * Removes the entries of `remove` and sets those of `put` (by public key),
   * then re-decides what they affect. Returns how each entry whose standing
   * may have changed stood before; the others are as they were.
   */
  change(remove: Iterable<string>, put: Iterable<PeerEntry>): Map<string, Standing> {
    this.#before = new Map();
    const keys: string[] = [];
    for (const k of remove) {
      this.#entries.delete(k);
      keys.push(k);
    }
    for (const e of put) {
      this.#entries.set(e.publicKey, e);
      keys.push(e.publicKey);
    }
    // The changed entries first, so their operations come before those of
    // the entries they displace or free.
    for (const k of keys) this.#record(k);
    for (const k of keys) this.#withdraw(k);
    for (const k of keys) this.#queue.push(k);
    // Deciding an entry queues only entries after it, so each is decided once.
    for (let k = this.#queue.pop(); k !== undefined; k = this.#queue.pop()) {
      this.#withdraw(k);
      this.#decide(this.#entries.get(k) as PeerEntry);
    }
    return this.#before;
  }

  /**
   * Takes an entry's standing away (its ranges, or its refusal), recording
   * how it stood; entries it refused are queued to be decided again.
   */
  #withdraw(key: string): void {
    this.#record(key);
    const claims = this.#claims.get(key);
    if (claims !== undefined) {
      for (const c of claims) this.#claimed[c.family].remove(c);
      this.#claims.delete(key);
      this.#peers.delete(key);
      const refused = this.#refuses.get(key);
      this.#refuses.delete(key);
      for (const k of refused ?? []) {
        this.#withdraw(k);
        this.#queue.push(k);
      }
    } else if (this.#refused.delete(key)) {
      const by = this.#refusedBy.get(key);
      if (by === undefined) return;
      this.#refusedBy.delete(key);
      const others = this.#refuses.get(by);
      others?.delete(key);
      if (others?.size === 0) this.#refuses.delete(by);
    }
  }

  /** Notes how an entry stands, unless it was noted earlier in this change. */
  #record(key: string): void {
    if (this.#before.has(key)) return;
    this.#before.set(key, { peer: this.#peers.get(key), refusal: this.#refused.get(key)?.reason });
  }

  /**
   * Accepts or refuses an entry without a standing. Accepted, it displaces
   * the later peers it overlaps, which are queued to be decided again.
   */
  #decide(e: PeerEntry): void {
    if (isSelf(e, this.#self)) return;
    // The cluster manager refuses these too; a node does not trust it blindly.
    if (!isKey(e.publicKey) || isLowOrderKey(e.publicKey)) {
      return this.#refuse(e, "its public key is not a usable Curve25519 key");
    }
    if (e.endpoint !== undefined) {
      try {
        parseEndpoint(e.endpoint);
      } catch (err) {
        return this.#refuse(e, `endpoint ${e.endpoint}: ${(err as Error).message}`);
      }
    }
    const mine: PeerClaim[] = [];
    const later = new Set<string>();
    for (const text of e.allowedIps) {
      let c;
      try {
        c = parseCidr(text);
      } catch (err) {
        return this.#refuse(e, `allowed IP ${text} is invalid: ${(err as Error).message}`);
      }
      const lo = c.base, hi = lastAddress(c);
      const o = this.#own[c.family].overlap(lo, hi);
      if (o) return this.#refuse(e, `allowed IP ${text} overlaps this node's subnet ${o.cidr}`);
      for (const other of this.#claimed[c.family].overlapping(lo, hi)) {
        if (compareEntries(this.#peers.get(other.key) as PeerEntry, e) < 0) {
          return this.#refuse(
            e,
            `allowed IP ${text} overlaps ${other.cidr} of ${other.name}`,
            other.key,
          );
        }
        later.add(other.key);
      }
      const m = mine.find((m) => m.family === c.family && m.lo <= hi && lo <= m.hi);
      if (m) return this.#refuse(e, `allowed IP ${text} overlaps ${m.cidr} of ${m.name}`);
      mine.push({ family: c.family, lo, hi, cidr: text, name: e.name, key: e.publicKey });
    }
    for (const k of later) {
      this.#withdraw(k);
      this.#queue.push(k);
    }
    for (const m of mine) this.#claimed[m.family].add(m);
    this.#claims.set(e.publicKey, mine);
    this.#peers.set(e.publicKey, e);
  }

  #refuse(e: PeerEntry, reason: string, by?: string): void {
    this.#refused.set(e.publicKey, { name: e.name, publicKey: e.publicKey, reason });
    if (by === undefined) return;
    this.#refusedBy.set(e.publicKey, by);
    const others = this.#refuses.get(by);
    if (others !== undefined) others.add(e.publicKey);
    else this.#refuses.set(by, new Set([e.publicKey]));
  }
}

/**
 * The peers to have: every entry but this node itself, minus any whose
 * AllowedIPs are invalid or overlap this node's subnets or a peer's earlier
 * in claim order (see {@linkcode Admission}).
 */
export function desiredPeers(
  entries: readonly PeerEntry[],
  self: Self,
): { peers: Map<string, PeerEntry>; refused: Refusal[] } {
  const admission = new Admission(self);
  admission.change([], entries);
  return { peers: new Map(admission.peers), refused: admission.refused };
}

function isSelf(e: PeerEntry, self: Self): boolean {
  return e.publicKey === self.publicKey || (e.kind === "node" && e.name === self.name);
}

/**
 * The WireGuard peer for a cluster entry. `known`: the interface has it
 * already, so a NAT'd peer's endpoint is left as it is on a node not behind
 * NAT (WireGuard moved it to where that peer's handshakes come from, which
 * is where it is reached).
 */
export function toPeer(e: PeerEntry, self?: Pick<Self, "nat">, known = false): Peer {
  return {
    publicKey: e.publicKey,
    allowedIps: e.allowedIps,
    ...(e.endpoint !== undefined && !(known && keepsRoamed(e, self))
      ? { endpoint: e.endpoint }
      : {}),
    // Not toward a next key held ahead of its switch (no allowed IPs): a
    // keep-alive would start a handshake the rotating node's could cross.
    ...(self?.nat && e.kind === "node" && e.allowedIps.length > 0
      ? { persistentKeepalive: NAT_KEEPALIVE_S }
      : {}),
  };
}

/** Whether this node keeps the endpoint the interface learnt for `e` (see {@linkcode toPeer}). */
function keepsRoamed(e: PeerEntry, self: Pick<Self, "nat"> | undefined): boolean {
  return e.nat === true && !self?.nat;
}

function sameAllowed(a: readonly string[], b: readonly string[]): boolean {
  return [...a].sort().join() === [...b].sort().join();
}

/**
 * The operations that turn `current` (the interface's peers) into `desired`,
 * leaving pod peers (`keep`) alone. Unchanged peers produce no operation; a
 * client's endpoint learned from its handshake is not a change.
 */
export function planPeers(
  desired: ReadonlyMap<string, PeerEntry>,
  current: readonly (
    & Pick<PeerState, "publicKey" | "allowedIps" | "endpoint">
    & Partial<Pick<PeerState, "persistentKeepalive">>
  )[],
  keep: ReadonlySet<string>,
  self?: Pick<Self, "nat">,
): PeerOp[] {
  const ops: PeerOp[] = [];
  const have = new Map(current.map((p) => [p.publicKey, p]));
  for (const [key, e] of desired) {
    const p = have.get(key);
    const roamed = keepsRoamed(e, self) && p?.endpoint != null;
    const endpointDiffers = e.endpoint !== undefined && p?.endpoint !== e.endpoint && !roamed;
    const want = toPeer(e, self, roamed);
    const keepaliveDiffers = want.persistentKeepalive !== undefined &&
      p?.persistentKeepalive !== want.persistentKeepalive;
    if (!p || !sameAllowed(p.allowedIps, e.allowedIps) || endpointDiffers || keepaliveDiffers) {
      ops.push({ op: "set", peer: want, name: e.name });
    }
  }
  for (const p of current) {
    if (!desired.has(p.publicKey) && !keep.has(p.publicKey)) {
      ops.push({ op: "remove", publicKey: p.publicKey });
    }
  }
  return ops;
}

/** Keeps the interface's mesh peers in step with the cluster's events. */
export class Mesh {
  readonly #wg: WireGuardControl;
  readonly #iface: string;
  readonly #self: Self;
  readonly #log: Logger;
  readonly #podKeys: () => ReadonlySet<string>;
  readonly #prime: (peer: PeerEntry) => void;
  /** The cluster's view and what of it is applied. */
  #admission: Admission;
  /** By kind and name: the cluster's entry, and the keys it stands for (see {@linkcode expandEntry}). */
  #byName = new Map<string, { readonly entry: PeerEntry; readonly keys: readonly string[] }>();
  /** Next keys held ahead of their switch (no allowed IPs yet), and the timers of the switches. */
  readonly #pending = new Set<string>();
  readonly #switches = new Map<string, ReturnType<typeof setTimeout>>();
  readonly #now: () => number;
  readonly #switchWaitMs: number;
  /** Events and switches, one at a time. */
  #turn: Promise<unknown> = Promise.resolve();
  /**
   * Set while the interface may differ from what was applied (an operation
   * failed, or a resync is under way): the next event plans against it.
   */
  #stale = false;
  revision = 0;
  /** Operations applied so far (tests and status). */
  applied = 0;
  /** Full diffs of the interface against the cluster's view (snapshots, recoveries). */
  resyncs = 0;
  /** Endpoints this node chose for peers (a relay), used in place of the cluster's. */
  readonly #chosen = new Map<string, string>();

  constructor(options: {
    wg: WireGuardControl;
    iface: string;
    self: Self;
    logger: Logger;
    podKeys: () => ReadonlySet<string>;
    /**
     * Called (not awaited) for each node newly added as a peer, to send it one
     * packet. Whichever side learns of the other second then starts a
     * handshake the other can answer; the first side's attempt may have been
     * dropped, and WireGuard retries only after five seconds.
     */
    prime?: (peer: PeerEntry) => void;
    /** The clock key switches are timed by (tests). */
    now?: () => number;
    /** How long a switch waits for the rotating node's handshake (default {@linkcode SWITCH_WAIT_MS}). */
    switchWaitMs?: number;
  }) {
    this.#now = options.now ?? Date.now;
    this.#switchWaitMs = options.switchWaitMs ?? SWITCH_WAIT_MS;
    this.#wg = options.wg;
    this.#iface = options.iface;
    this.#self = options.self;
    this.#log = options.logger;
    this.#podKeys = options.podKeys;
    this.#prime = options.prime ?? (() => {});
    this.#admission = new Admission(this.#self);
  }

  /**
   * Sends to `endpoint` for the peer of `publicKey` from now on, whatever the
   * cluster says (a relay), or, with undefined, to the cluster's endpoint
   * again. `apply`: set it on the interface now (not when the interface is
   * there already, having moved to it by itself).
   */
  async choose(publicKey: string, endpoint: string | undefined, apply = true): Promise<void> {
    if (endpoint === undefined) this.#chosen.delete(publicKey);
    else this.#chosen.set(publicKey, endpoint);
    const e = this.#admission.peers.get(publicKey);
    const to = endpoint ?? e?.endpoint;
    if (!apply || e === undefined || to === undefined) return;
    await this.#wg.configure(this.#iface, { peers: [{ publicKey, endpoint: to }] });
  }

  /** The endpoint chosen for a peer, if any (see {@linkcode choose}). */
  chosen(publicKey: string): string | undefined {
    return this.#chosen.get(publicKey);
  }

  #withChosen(e: PeerEntry): PeerEntry {
    const ep = this.#chosen.get(e.publicKey);
    return ep === undefined ? e : { ...e, endpoint: ep };
  }

  /** The mesh peers as last applied (next keys held ahead of their switch left out). */
  get peers(): PeerEntry[] {
    return [...this.#admission.peers.values()].filter((e) => !this.#pending.has(e.publicKey));
  }

  /** Next keys of peers held ahead of their switch. */
  get pendingKeys(): ReadonlySet<string> {
    return this.#pending;
  }

  /** Ends the timers of key switches (the node stops). */
  close(): void {
    for (const t of this.#switches.values()) clearTimeout(t);
    this.#switches.clear();
  }

  /** The cluster's entries that are not applied, and why. */
  get refused(): Refusal[] {
    return this.#admission.refused;
  }

  /** Applies one event from the watch stream (after any event or switch under way). */
  apply(event: WatchEvent): Promise<void> {
    return this.#inTurn(() => this.#apply(event));
  }

  #inTurn(f: () => Promise<void>): Promise<void> {
    const run = this.#turn.then(f);
    this.#turn = run.catch(() => {});
    return run;
  }

  async #apply(event: WatchEvent): Promise<void> {
    if (event.type === "snapshot") {
      const before = this.#admission.peers;
      this.#admission = new Admission(this.#self);
      this.#byName = new Map();
      this.#pending.clear();
      for (const t of this.#switches.values()) clearTimeout(t);
      this.#switches.clear();
      const now = this.#now();
      const all: PeerEntry[] = [];
      for (const p of event.peers) all.push(...this.#stand(p, now));
      this.#admission.change([], all);
      for (const r of this.#admission.refused) {
        this.#log.warn("refusing peer {name}: {reason}", { name: r.name, reason: r.reason });
      }
      await this.#resync((key) => before.has(key));
    } else {
      const changed = event.type === "upsert"
        ? this.#upsert(event.peer)
        : this.#delete(event.kind, event.name, event.publicKey);
      await this.#settle(changed);
    }
    this.revision = event.revision;
  }

  /**
   * Puts an entry: the keys it stands for replace those its name stood for
   * (a new key moves the allowed IPs before the old key goes), and an
   * endpoint chosen for the old key goes with them.
   */
  #upsert(e: PeerEntry, now = this.#now()): Map<string, Standing> {
    const name = nameKey(e);
    const was = this.#byName.get(name);
    const entries = this.#stand(e, now);
    const keys = new Set(entries.map((x) => x.publicKey));
    // A key another name stood for is that name's no more.
    for (const k of keys) {
      const other = this.#admission.entries.get(k);
      const held = other && this.#byName.get(nameKey(other));
      if (other !== undefined && nameKey(other) !== name && held !== undefined) {
        const rest = held.keys.filter((x) => x !== k);
        if (rest.length === 0) this.#byName.delete(nameKey(other));
        else this.#byName.set(nameKey(other), { ...held, keys: rest });
      }
    }
    const remove = (was?.keys ?? []).filter((k) => !keys.has(k));
    const wasMain = was?.keys[0];
    const chosen = wasMain === undefined ? undefined : this.#chosen.get(wasMain);
    const main = entries[0] as PeerEntry;
    if (chosen !== undefined && !keys.has(wasMain as string)) {
      this.#chosen.set(main.publicKey, chosen);
    }
    return this.#admission.change(remove, entries);
  }

  /** Takes a name's entry away: every key it stood for, when the key deleted is one of them. */
  #delete(kind: PeerEntry["kind"], name: string, publicKey: string): Map<string, Standing> {
    const at = `${kind}/${name}`;
    const held = this.#byName.get(at);
    let remove = [publicKey];
    if (
      held !== undefined && (held.entry.publicKey === publicKey || held.keys.includes(publicKey))
    ) {
      remove = [...held.keys];
      this.#byName.delete(at);
      const t = this.#switches.get(at);
      if (t !== undefined) clearTimeout(t);
      this.#switches.delete(at);
    }
    for (const k of remove) this.#pending.delete(k);
    return this.#admission.change(remove, []);
  }

  /**
   * Records an entry under its name and returns the entries it stands for
   * now; a switch ahead is timed, to put the entry again at its moment.
   */
  #stand(e: PeerEntry, now: number): PeerEntry[] {
    const name = nameKey(e);
    const entries = expandEntry(e, now);
    for (const k of this.#byName.get(name)?.keys ?? []) this.#pending.delete(k);
    this.#byName.set(name, { entry: e, keys: entries.map((x) => x.publicKey) });
    const t = this.#switches.get(name);
    if (t !== undefined) clearTimeout(t);
    this.#switches.delete(name);
    const next = e.nextKey;
    if (entries.length === 2 && next !== undefined && !isSelf(e, this.#self)) {
      this.#pending.add(next.publicKey);
      const timer = setTimeout(() => {
        this.#switches.delete(name);
        void (async () => {
          await this.#firstHandshake(name, next.publicKey);
          await this.#inTurn(() => this.#switchTo(name, next.publicKey));
        })().catch((err) =>
          this.#log.error("cannot switch peer {name} to its next key: {error}", {
            name: e.name,
            error: err,
          })
        );
      }, Math.max(0, next.switchAt - now));
      Deno.unrefTimer(timer);
      this.#switches.set(name, timer);
    }
    return entries;
  }

  /**
   * Waits, from the moment of a switch, until the rotating node's first
   * handshake under its next key is done (the next key's peer has one), at
   * most {@linkcode SWITCH_WAIT_MS}. Only that node starts the handshake: if
   * this node routed to the next key first, both would start one at once,
   * each would answer the other's and drop the answer to its own, and
   * WireGuard tries again only five seconds later.
   */
  async #firstHandshake(name: string, nextKey: string): Promise<void> {
    const deadline = Date.now() + this.#switchWaitMs;
    while (Date.now() < deadline && this.#byName.get(name)?.entry.nextKey?.publicKey === nextKey) {
      const state = await this.#wg.show(this.#iface).catch(() => undefined);
      const p = state?.peers.find((x) => x.publicKey === nextKey);
      if (p !== undefined && p.latestHandshake > 0) return;
      await new Promise((r) => setTimeout(r, SWITCH_POLL_MS));
    }
  }

  /** A peer's key switch is due: its entry is put again, under its next key. */
  async #switchTo(name: string, nextKey: string): Promise<void> {
    const held = this.#byName.get(name);
    if (held?.entry.nextKey?.publicKey !== nextKey) return;
    this.#log.info("peer {name} switches to key {key}", { name: held.entry.name, key: nextKey });
    // Its moment, though a timer may fire a little early.
    const at = Math.max(this.#now(), held.entry.nextKey.switchAt);
    await this.#settle(this.#upsert(held.entry, at));
  }

  /** Logs new refusals and carries out a change (or resyncs, when the interface may differ). */
  async #settle(changed: Map<string, Standing>): Promise<void> {
    for (const [key, was] of changed) {
      const reason = this.#admission.refusal(key);
      if (reason === undefined || reason === was.refusal) continue;
      const name = this.#admission.entries.get(key)?.name;
      this.#log.warn("refusing peer {name}: {reason}", { name, reason });
    }
    if (this.#stale) {
      await this.#resync((key) => {
        const was = changed.get(key);
        return was === undefined || was.peer !== undefined;
      });
    } else {
      await this.#carryOut(changed);
    }
  }

  /**
   * Applies what one delta changed: one `wg set` per peer added or changed
   * and one removal per peer gone, touching no other peer. New nodes are
   * primed.
   */
  async #carryOut(changed: ReadonlyMap<string, Standing>): Promise<void> {
    const sets: { entry: PeerEntry; known: boolean }[] = [];
    const removes: string[] = [];
    for (const [key, was] of changed) {
      const now = this.#admission.peers.get(key);
      if (now !== undefined) {
        if (was.peer === undefined || differs(was.peer, now, this.#self)) {
          sets.push({ entry: now, known: was.peer !== undefined });
        }
      } else if (was.peer !== undefined) {
        removes.push(key);
      }
    }
    try {
      for (const { entry: e, known } of sets) {
        await this.#wg.setPeer(this.#iface, toPeer(this.#withChosen(e), this.#self, known));
        this.applied++;
        this.#log.info("peer {name} set: {allowed}", { name: e.name, allowed: e.allowedIps });
      }
      const pods = removes.length > 0 ? this.#podKeys() : new Set<string>();
      for (const key of removes) {
        if (pods.has(key)) continue;
        await this.#wg.removePeer(this.#iface, key);
        this.#chosen.delete(key);
        this.applied++;
        this.#log.info("peer {key} removed", { key });
      }
    } catch (err) {
      this.#stale = true;
      throw err;
    }
    if (sets.length <= PRIME_LIMIT) {
      for (const { entry: e, known } of sets) {
        if (e.kind === "node" && !known && e.allowedIps.length > 0) this.#prime(e);
      }
    }
  }

  /**
   * Plans the whole set against the interface itself (after a snapshot, so
   * a restart adopts what is there, or after a failed operation), in
   * batched `wg set`s. `wasApplied` tells which peers are not new (not
   * primed).
   */
  async #resync(wasApplied: (publicKey: string) => boolean): Promise<void> {
    this.#stale = true;
    this.resyncs++;
    const peers = this.#admission.peers;
    const current = (await this.#wg.show(this.#iface)).peers;
    const ops = planPeers(
      this.#chosen.size === 0
        ? peers
        : new Map([...peers].map(([k, e]) => [k, this.#withChosen(e)])),
      current,
      this.#podKeys(),
      this.#self,
    );
    const sets = ops.flatMap((o) => o.op === "set" ? [o] : []);
    if (sets.length > 1) {
      // Many peers per `wg set`, so thousands take a few commands.
      for (let i = 0; i < sets.length; i += RESYNC_BATCH) {
        await this.#wg.setPeers(this.#iface, sets.slice(i, i + RESYNC_BATCH).map((o) => o.peer));
      }
      this.#log.info("resync: {n} peers set", { n: sets.length });
    } else {
      for (const o of sets) {
        await this.#wg.setPeer(this.#iface, o.peer);
        this.#log.info("peer {name} set: {allowed}", { name: o.name, allowed: o.peer.allowedIps });
      }
    }
    for (const o of ops) {
      if (o.op !== "remove") continue;
      await this.#wg.removePeer(this.#iface, o.publicKey);
      this.#log.info("peer {key} removed", { key: o.publicKey });
    }
    this.applied += ops.length;
    this.#stale = false;
    // A large resync (a restart, or a join into a big cluster) meets nodes
    // that already know this one, so their handshakes get through unprimed.
    if (sets.length <= PRIME_LIMIT) {
      for (const o of sets) {
        const entry = peers.get(o.peer.publicKey);
        if (
          entry?.kind === "node" && entry.allowedIps.length > 0 && !wasApplied(o.peer.publicKey)
        ) this.#prime(entry);
      }
    }
  }
}

/** Whether applying `now` over `was` takes a `wg set` (a learned endpoint is no change). */
function differs(was: PeerEntry, now: PeerEntry, self: Pick<Self, "nat">): boolean {
  return !sameAllowed(was.allowedIps, now.allowedIps) ||
    (now.endpoint !== undefined && now.endpoint !== was.endpoint && !keepsRoamed(now, self));
}

function nameKey(e: PeerEntry): string {
  return `${e.kind}/${e.name}`;
}

/**
 * The entries an entry stands for at `now`: itself; or, while a key switch
 * is ahead (see `NextKey`), itself and its next key with no allowed IPs (so
 * that the node's first handshake under it is answered); or, once the
 * moment has passed, the entry under its next key.
 */
export function expandEntry(e: PeerEntry, now: number): PeerEntry[] {
  const next = e.nextKey;
  if (next === undefined) return [e];
  const { nextKey: _, ...plain } = e;
  if (next.switchAt <= now) return [{ ...plain, publicKey: next.publicKey }];
  return [e, { ...plain, publicKey: next.publicKey, allowedIps: [] }];
}
