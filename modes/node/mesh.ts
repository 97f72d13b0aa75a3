/**
 * The node's mesh peers (other nodes and external clients) on its WireGuard
 * interface, kept in step with the cluster one peer at a time: a snapshot is
 * applied as a diff against what the interface has, each delta as one `wg
 * set` planned in time independent of the number of peers. The interface is
 * never replaced; pod peers are never touched.
 */
import type { PeerEntry, WatchEvent } from "../../lib/api/cluster_types.ts";
import type { Logger } from "../../lib/log.ts";
import type { Peer, PeerState, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { lastAddress, parseCidr } from "../../lib/ipam/mod.ts";

/** Peers per `wg set` when a snapshot is applied. */
export const RESYNC_BATCH = 200;

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
}

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
class Claims {
  readonly #ranges: Claim[] = [];

  /** The claimed range overlapping [lo, hi], if any. */
  overlap(lo: bigint, hi: bigint): Claim | undefined {
    const r = this.#ranges;
    let a = 0, b = r.length;
    while (a < b) {
      const m = (a + b) >> 1;
      if ((r[m] as Claim).hi < lo) a = m + 1;
      else b = m;
    }
    const c = r[a];
    return c !== undefined && c.lo <= hi ? c : undefined;
  }

  /** Adds a range known not to overlap any claimed one. */
  add(c: Claim): void {
    this.#ranges.splice(this.#at(c.lo), 0, c);
  }

  /** Removes a range added before (the same object). */
  remove(c: Claim): void {
    const i = this.#at(c.lo);
    if (this.#ranges[i] === c) this.#ranges.splice(i, 1);
  }

  /** The index of the first range starting at or after `lo`. */
  #at(lo: bigint): number {
    const r = this.#ranges;
    let a = 0, b = r.length;
    while (a < b) {
      const m = (a + b) >> 1;
      if ((r[m] as Claim).lo < lo) a = m + 1;
      else b = m;
    }
    return a;
  }
}

/** Claimed ranges per family. */
type FamilyClaims = { readonly 4: Claims; readonly 6: Claims };

/** A family-tagged claim of one peer. */
type PeerClaim = Claim & { readonly family: 4 | 6 };

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
 * The ranges `e` claims, or why it may not have them: an invalid CIDR, an
 * overlap with this node's subnets, with `claimed`, or within its own list.
 */
function claimsOf(
  e: PeerEntry,
  own: FamilyClaims,
  claimed: FamilyClaims,
): { claims: PeerClaim[] } | { reason: string } {
  const mine: PeerClaim[] = [];
  for (const text of e.allowedIps) {
    let c;
    try {
      c = parseCidr(text);
    } catch (err) {
      return { reason: `allowed IP ${text} is invalid: ${(err as Error).message}` };
    }
    const lo = c.base, hi = lastAddress(c);
    const o = own[c.family].overlap(lo, hi);
    if (o) return { reason: `allowed IP ${text} overlaps this node's subnet ${o.cidr}` };
    const other = claimed[c.family].overlap(lo, hi) ??
      mine.find((m) => m.family === c.family && m.lo <= hi && lo <= m.hi);
    if (other) return { reason: `allowed IP ${text} overlaps ${other.cidr} of ${other.name}` };
    mine.push({ family: c.family, lo, hi, cidr: text, name: e.name });
  }
  return { claims: mine };
}

/**
 * The peers to have: every entry but this node itself, minus any whose
 * AllowedIPs overlap this node's subnets or an earlier accepted peer's
 * (entries are taken in name order, so the choice is the same on every node).
 */
export function desiredPeers(
  entries: readonly PeerEntry[],
  self: Self,
): {
  peers: Map<string, PeerEntry>;
  refused: Refusal[];
  /** The accepted peers' ranges, by public key and per family. */
  claims: Map<string, PeerClaim[]>;
  claimed: FamilyClaims;
} {
  const peers = new Map<string, PeerEntry>();
  const refused: Refusal[] = [];
  const claims = new Map<string, PeerClaim[]>();
  const own = ownClaims(self);
  const claimed = { 4: new Claims(), 6: new Claims() };
  const sorted = [...entries].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  for (const e of sorted) {
    if (isSelf(e, self)) continue;
    const r = claimsOf(e, own, claimed);
    if ("reason" in r) {
      refused.push({ name: e.name, publicKey: e.publicKey, reason: r.reason });
      continue;
    }
    peers.set(e.publicKey, e);
    claims.set(e.publicKey, r.claims);
    for (const m of r.claims) claimed[m.family].add(m);
  }
  return { peers, refused, claims, claimed };
}

function isSelf(e: PeerEntry, self: Self): boolean {
  return e.publicKey === self.publicKey || (e.kind === "node" && e.name === self.name);
}

/** The WireGuard peer for a cluster entry. */
export function toPeer(e: PeerEntry): Peer {
  return {
    publicKey: e.publicKey,
    allowedIps: e.allowedIps,
    ...(e.endpoint !== undefined ? { endpoint: e.endpoint } : {}),
  };
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
  current: readonly Pick<PeerState, "publicKey" | "allowedIps" | "endpoint">[],
  keep: ReadonlySet<string>,
): PeerOp[] {
  const ops: PeerOp[] = [];
  const have = new Map(current.map((p) => [p.publicKey, p]));
  for (const [key, e] of desired) {
    const p = have.get(key);
    const endpointDiffers = e.endpoint !== undefined && p?.endpoint !== e.endpoint;
    if (!p || !sameAllowed(p.allowedIps, e.allowedIps) || endpointDiffers) {
      ops.push({ op: "set", peer: toPeer(e), name: e.name });
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
  /** The cluster's view, by public key (before refusals). */
  #entries = new Map<string, PeerEntry>();
  /** The same entries' keys by kind and name. */
  #keyByName = new Map<string, string>();
  /** What was applied, by public key. */
  #applied = new Map<string, PeerEntry>();
  /** The applied peers' ranges: by key, and per family for overlap checks. */
  #claims = new Map<string, PeerClaim[]>();
  #claimed: FamilyClaims = { 4: new Claims(), 6: new Claims() };
  #own: FamilyClaims | undefined;
  /** Entries refused at the last full plan (a change may let them in). */
  #refused = 0;
  revision = 0;
  /** Operations applied so far (tests and status). */
  applied = 0;

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
  }) {
    this.#wg = options.wg;
    this.#iface = options.iface;
    this.#self = options.self;
    this.#log = options.logger;
    this.#podKeys = options.podKeys;
    this.#prime = options.prime ?? (() => {});
  }

  /** The mesh peers as last applied. */
  get peers(): PeerEntry[] {
    return [...this.#applied.values()];
  }

  /** Applies one event from the watch stream. */
  async apply(event: WatchEvent): Promise<void> {
    if (event.type === "snapshot") {
      this.#entries = new Map(event.peers.map((p) => [p.publicKey, p]));
      this.#keyByName = new Map(event.peers.map((p) => [nameKey(p), p.publicKey]));
      await this.#converge(true);
    } else if (event.type === "upsert") {
      const before = this.#keyByName.get(nameKey(event.peer));
      if (before !== undefined) this.#entries.delete(before);
      const sameKey = this.#entries.get(event.peer.publicKey);
      if (sameKey !== undefined) this.#keyByName.delete(nameKey(sameKey));
      this.#entries.set(event.peer.publicKey, event.peer);
      this.#keyByName.set(nameKey(event.peer), event.peer.publicKey);
      const old = [before, sameKey?.publicKey].filter((k) => k !== undefined);
      if (!(await this.#upsertOne(event.peer, old))) await this.#converge(false);
    } else if (event.type === "delete") {
      const e = this.#entries.get(event.publicKey);
      if (e !== undefined) {
        this.#entries.delete(event.publicKey);
        if (this.#keyByName.get(nameKey(e)) === e.publicKey) this.#keyByName.delete(nameKey(e));
      }
      if (!(await this.#removeOne(event.publicKey))) await this.#converge(false);
    }
    this.revision = event.revision;
  }

  /**
   * One peer added or changed, in time independent of how many peers there
   * are: one `wg set` (and one removal for a replaced key). Returns false,
   * having changed nothing, when only a full plan can decide: the entry
   * conflicts with another, or earlier refusals might be lifted.
   */
  async #upsertOne(e: PeerEntry, replaced: readonly string[]): Promise<boolean> {
    if (this.#refused > 0) return false;
    if (isSelf(e, this.#self)) return replaced.length === 0 && !this.#applied.has(e.publicKey);
    this.#own ??= ownClaims(this.#self);
    const prev = this.#applied.get(e.publicKey);
    const dropped = replaced.filter((k) => k !== e.publicKey && this.#applied.has(k));
    // Check against everything but what this change replaces.
    const freed = [e.publicKey, ...dropped].flatMap((k) => this.#claims.get(k) ?? []);
    for (const c of freed) this.#claimed[c.family].remove(c);
    const r = claimsOf(e, this.#own, this.#claimed);
    if ("reason" in r) {
      for (const c of freed) this.#claimed[c.family].add(c);
      return false;
    }
    for (const c of r.claims) this.#claimed[c.family].add(c);
    const unchanged = prev !== undefined && sameAllowed(prev.allowedIps, e.allowedIps) &&
      (e.endpoint === undefined || e.endpoint === prev.endpoint);
    this.#claims.set(e.publicKey, r.claims);
    this.#applied.set(e.publicKey, e);
    if (!unchanged) {
      await this.#wg.setPeer(this.#iface, toPeer(e));
      this.applied++;
      this.#log.info("peer {name} set: {allowed}", { name: e.name, allowed: e.allowedIps });
    }
    for (const k of dropped) await this.#drop(k);
    if (prev === undefined && e.kind === "node") this.#prime(e);
    return true;
  }

  /** One peer removed; false (nothing changed) when refused entries might now fit. */
  async #removeOne(publicKey: string): Promise<boolean> {
    if (this.#refused > 0) return false;
    if (this.#applied.has(publicKey)) await this.#drop(publicKey);
    return true;
  }

  async #drop(publicKey: string): Promise<void> {
    for (const c of this.#claims.get(publicKey) ?? []) this.#claimed[c.family].remove(c);
    this.#claims.delete(publicKey);
    this.#applied.delete(publicKey);
    if (this.#podKeys().has(publicKey)) return;
    await this.#wg.removePeer(this.#iface, publicKey);
    this.applied++;
    this.#log.info("peer {key} removed", { key: publicKey });
  }

  /**
   * Plans the whole set: against what was applied after a delta that needed
   * it, or, after a snapshot, against the interface itself, so a restart
   * adopts what is there.
   */
  async #converge(fromInterface: boolean): Promise<void> {
    const { peers, refused, claims, claimed } = desiredPeers(
      [...this.#entries.values()],
      this.#self,
    );
    for (const r of refused) {
      this.#log.warn("refusing peer {name}: {reason}", { name: r.name, reason: r.reason });
    }
    const current = fromInterface
      ? (await this.#wg.show(this.#iface)).peers
      : [...this.#applied.values()].map((e) => ({
        publicKey: e.publicKey,
        allowedIps: e.allowedIps,
        endpoint: e.endpoint ?? null,
      }));
    const ops = planPeers(peers, current, this.#podKeys());
    const sets = ops.flatMap((o) => o.op === "set" ? [o] : []);
    if (fromInterface && sets.length > 1) {
      // A resync: many peers per `wg set`, so thousands take a few commands.
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
    // A large resync (a restart, or a join into a big cluster) meets nodes
    // that already know this one, so their handshakes get through unprimed.
    if (sets.length <= PRIME_LIMIT) {
      for (const o of sets) {
        const entry = peers.get(o.peer.publicKey);
        if (entry?.kind === "node" && !this.#applied.has(o.peer.publicKey)) this.#prime(entry);
      }
    }
    this.#applied = peers;
    this.#claims = claims;
    this.#claimed = claimed;
    this.#refused = refused.length;
  }
}

function nameKey(e: PeerEntry): string {
  return `${e.kind}/${e.name}`;
}
