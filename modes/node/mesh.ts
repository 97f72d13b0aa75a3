/**
 * The node's mesh peers (other nodes and external clients) on its WireGuard
 * interface, kept in step with the cluster one peer at a time: a snapshot is
 * applied as a diff against what the interface has, each delta as one `wg
 * set`. The interface is never replaced; pod peers are never touched.
 */
import type { PeerEntry, WatchEvent } from "../../lib/api/cluster_types.ts";
import type { Logger } from "../../lib/log.ts";
import type { Peer, PeerState, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { overlaps, parseCidr } from "../../lib/ipam/mod.ts";

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

function cidrsOverlap(a: string, b: string): boolean {
  return overlaps(parseCidr(a), parseCidr(b));
}

/**
 * The peers to have: every entry but this node itself, minus any whose
 * AllowedIPs overlap this node's subnets or an earlier accepted peer's.
 */
export function desiredPeers(
  entries: readonly PeerEntry[],
  self: Self,
): { peers: Map<string, PeerEntry>; refused: Refusal[] } {
  const peers = new Map<string, PeerEntry>();
  const refused: Refusal[] = [];
  const claimed: { cidr: string; name: string }[] = [];
  const sorted = [...entries].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  for (const e of sorted) {
    if (e.publicKey === self.publicKey || (e.kind === "node" && e.name === self.name)) continue;
    const reason = refusalOf(e, self, claimed);
    if (reason) {
      refused.push({ name: e.name, publicKey: e.publicKey, reason });
      continue;
    }
    peers.set(e.publicKey, e);
    for (const c of e.allowedIps) claimed.push({ cidr: c, name: e.name });
  }
  return { peers, refused };
}

function refusalOf(
  e: PeerEntry,
  self: Self,
  claimed: readonly { cidr: string; name: string }[],
): string | undefined {
  for (const c of e.allowedIps) {
    try {
      parseCidr(c);
    } catch (err) {
      return `allowed IP ${c} is invalid: ${(err as Error).message}`;
    }
    const own = self.subnets.find((s) => cidrsOverlap(s, c));
    if (own) return `allowed IP ${c} overlaps this node's subnet ${own}`;
    const other = claimed.find((o) => cidrsOverlap(o.cidr, c));
    if (other) return `allowed IP ${c} overlaps ${other.cidr} of ${other.name}`;
  }
  return undefined;
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
    for (const op of ops) {
      if (op.op === "set") {
        await this.#wg.setPeer(this.#iface, op.peer);
        const entry = peers.get(op.peer.publicKey);
        if (entry?.kind === "node" && !this.#applied.has(op.peer.publicKey)) this.#prime(entry);
        this.#log.info("peer {name} set: {allowed}", {
          name: op.name,
          allowed: op.peer.allowedIps,
        });
      } else {
        await this.#wg.removePeer(this.#iface, op.publicKey);
        this.#log.info("peer {key} removed", { key: op.publicKey });
      }
      this.applied++;
    }
    this.#applied = peers;
  }
}
