/**
 * The node's mesh peers (other nodes and external clients) on its WireGuard
 * interface, kept in step with the cluster one peer at a time: a snapshot is
 * applied as a diff against what the interface has, each delta as one `wg
 * set`. The interface is never replaced; pod peers are never touched.
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
    const r = this.#ranges;
    let a = 0, b = r.length;
    while (a < b) {
      const m = (a + b) >> 1;
      if ((r[m] as Claim).lo < c.lo) a = m + 1;
      else b = m;
    }
    r.splice(a, 0, c);
  }
}

/**
 * The peers to have: every entry but this node itself, minus any whose
 * AllowedIPs overlap this node's subnets or an earlier accepted peer's
 * (entries are taken in name order, so the choice is the same on every node).
 */
export function desiredPeers(
  entries: readonly PeerEntry[],
  self: Self,
): { peers: Map<string, PeerEntry>; refused: Refusal[] } {
  const peers = new Map<string, PeerEntry>();
  const refused: Refusal[] = [];
  const own = { 4: new Claims(), 6: new Claims() };
  const claimed = { 4: new Claims(), 6: new Claims() };
  for (const s of self.subnets) {
    const c = parseCidr(s);
    own[c.family].add({ lo: c.base, hi: lastAddress(c), cidr: s, name: self.name });
  }
  const sorted = [...entries].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  for (const e of sorted) {
    if (e.publicKey === self.publicKey || (e.kind === "node" && e.name === self.name)) continue;
    const mine: (Claim & { family: 4 | 6 })[] = [];
    let reason: string | undefined;
    for (const text of e.allowedIps) {
      let c;
      try {
        c = parseCidr(text);
      } catch (err) {
        reason = `allowed IP ${text} is invalid: ${(err as Error).message}`;
        break;
      }
      const lo = c.base, hi = lastAddress(c);
      const o = own[c.family].overlap(lo, hi);
      if (o) {
        reason = `allowed IP ${text} overlaps this node's subnet ${o.cidr}`;
        break;
      }
      const other = claimed[c.family].overlap(lo, hi) ??
        mine.find((m) => m.family === c.family && m.lo <= hi && lo <= m.hi);
      if (other) {
        reason = `allowed IP ${text} overlaps ${other.cidr} of ${other.name}`;
        break;
      }
      mine.push({ family: c.family, lo, hi, cidr: text, name: e.name });
    }
    if (reason) {
      refused.push({ name: e.name, publicKey: e.publicKey, reason });
      continue;
    }
    peers.set(e.publicKey, e);
    for (const m of mine) claimed[m.family].add(m);
  }
  return { peers, refused };
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
  /** What was applied, by public key. */
  #applied = new Map<string, PeerEntry>();
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
      await this.#converge(true);
    } else if (event.type === "upsert") {
      for (const [k, e] of this.#entries) {
        if (e.kind === event.peer.kind && e.name === event.peer.name) this.#entries.delete(k);
      }
      this.#entries.set(event.peer.publicKey, event.peer);
      await this.#converge(false);
    } else if (event.type === "delete") {
      this.#entries.delete(event.publicKey);
      await this.#converge(false);
    }
    this.revision = event.revision;
  }

  /**
   * Plans against what was applied (deltas: one operation) or, after a
   * snapshot, against the interface itself, so a restart adopts what is there.
   */
  async #converge(fromInterface: boolean): Promise<void> {
    const { peers, refused } = desiredPeers([...this.#entries.values()], this.#self);
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
  }
}
