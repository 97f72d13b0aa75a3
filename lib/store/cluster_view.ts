/**
 * What the cluster store's rules read and what they return. A rule
 * (lib/store/cluster_rules.ts) is a function of a {@linkcode ClusterView}
 * that returns a {@linkcode Planned} result: the value to answer and the
 * {@linkcode ChangeSet} to commit. An engine (SQLite, etcd, memory) provides
 * the view, commits the change set atomically and feeds the watch with its
 * events; it decides nothing.
 */
import {
  type Family,
  type IpamChanges,
  IpamDraft,
  type IpamReader,
  noIpamChanges,
} from "../ipam/mod.ts";
import type { ClientInfo, NodeInfo, PeerEntry } from "../domain/cluster.ts";
import { clientPeer, nodePeer, type TokenRecord } from "./cluster_store.ts";
import { ClusterPools, type PoolLayout } from "./cluster_pools.ts";

/** A node as stored: its public record and the hash of its credential. */
export interface NodeRecord extends NodeInfo {
  readonly credentialHash: string;
}

/** A token as stored: its record and the hash of its secret. */
export interface StoredToken extends TokenRecord {
  readonly hash: string;
}

/** A removed node's subnet waiting out its grace period before it goes back to the pool. */
export interface QuarantineEntry {
  readonly subnet: string;
  readonly family: Family;
  readonly name: string;
  readonly publicKey: string;
  readonly releaseAt: number;
}

/** Who holds a public key. */
export interface KeyHolder {
  readonly kind: "node" | "client";
  readonly name: string;
}

/** The cluster as a rule sees it: read-only, and consistent for the duration of one rule. */
export interface ClusterView {
  readonly layout: PoolLayout;
  /** The revision of the last committed peer change. */
  revision(): number;
  node(name: string): NodeRecord | undefined;
  nodeByCredential(hash: string): NodeRecord | undefined;
  /** Every node, oldest registration first (then by name). */
  nodes(): readonly NodeRecord[];
  /** Nodes last seen before `time`, in the order of {@linkcode nodes}; the first `limit` of them. */
  nodesSeenBefore(time: number, limit?: number): readonly NodeRecord[];
  client(name: string): ClientInfo | undefined;
  /** Every client, oldest first (then by name). */
  clients(): readonly ClientInfo[];
  keyHolder(publicKey: string): KeyHolder | undefined;
  token(id: string): StoredToken | undefined;
  tokenByHash(hash: string): StoredToken | undefined;
  /** Every token, admin ones included, oldest first (then by id). */
  tokens(): readonly StoredToken[];
  flag(key: string): string | undefined;
  flags(): ReadonlyMap<string, string>;
  /** Every quarantined subnet, by subnet. */
  quarantined(): readonly QuarantineEntry[];
  /** The quarantined subnets of a removed node of that name. */
  quarantinedFor(name: string): readonly QuarantineEntry[];
  /** Quarantined subnets whose grace period is over at `now`, the earliest first (then by subnet); the first `limit`. */
  quarantineDue(now: number, limit?: number): readonly QuarantineEntry[];
  /** The allocation state of one pool (see {@linkcode PoolLayout}). */
  ipam(namespace: string): IpamReader;
}

/** A peer change without its revision (the engine numbers it when it commits). */
export type PeerChange =
  | { readonly type: "upsert"; readonly peer: PeerEntry }
  | {
    readonly type: "delete";
    readonly kind: PeerEntry["kind"];
    readonly name: string;
    readonly publicKey: string;
  };

/** What a rule commits: records to put (a value) or delete (null), allocations and peer events. */
export interface ChangeSet {
  readonly nodes: ReadonlyMap<string, NodeRecord | null>;
  readonly clients: ReadonlyMap<string, ClientInfo | null>;
  readonly tokens: ReadonlyMap<string, StoredToken | null>;
  /** By subnet. */
  readonly quarantine: ReadonlyMap<string, QuarantineEntry | null>;
  readonly flags: ReadonlyMap<string, string | null>;
  /** By IPAM namespace. */
  readonly ipam: ReadonlyMap<string, IpamChanges>;
  /** In the order peers must see them. */
  readonly events: readonly PeerChange[];
}

/** A rule's answer and what committing it changes. */
export interface Planned<T> {
  readonly result: T;
  readonly changes: ChangeSet;
}

/** True when a change set writes nothing. */
export function isEmpty(c: ChangeSet): boolean {
  return c.nodes.size + c.clients.size + c.tokens.size + c.quarantine.size + c.flags.size +
          c.ipam.size === 0 && c.events.length === 0;
}

/**
 * The events that take peers from `before` to `after` (either may be
 * absent): a new key is one upsert, which a node applies by moving the
 * allowed IPs to the new key's peer and then removing the old one, so
 * nothing between the two is ever routed nowhere; an unchanged peer is not
 * announced.
 */
export function peerChanges(
  before: PeerEntry | undefined,
  after: PeerEntry | undefined,
): PeerChange[] {
  const gone = (p: PeerEntry): PeerChange => ({
    type: "delete",
    kind: p.kind,
    name: p.name,
    publicKey: p.publicKey,
  });
  if (after === undefined) return before === undefined ? [] : [gone(before)];
  if (before === undefined) return [{ type: "upsert", peer: after }];
  const same = before.publicKey === after.publicKey && before.kind === after.kind &&
    before.endpoint === after.endpoint && !before.nat === !after.nat &&
    before.nextKey?.publicKey === after.nextKey?.publicKey &&
    before.nextKey?.switchAt === after.nextKey?.switchAt && before.mtu === after.mtu &&
    before.allowedIps.length === after.allowedIps.length &&
    before.allowedIps.every((a, i) => a === after.allowedIps[i]);
  return same ? [] : [{ type: "upsert", peer: after }];
}

/** The public record of a stored node. */
export function nodeInfo(n: NodeRecord): NodeInfo {
  return {
    name: n.name,
    publicKey: n.publicKey,
    endpoint: n.endpoint,
    subnets: [...n.subnets],
    registeredAt: n.registeredAt,
    lastSeenAt: n.lastSeenAt,
    ...(n.pods !== undefined ? { pods: n.pods } : {}),
    ...(n.ready !== undefined ? { ready: n.ready } : {}),
    ...(n.nat ? { nat: true } : {}),
    ...(n.nextKey ? { nextKey: { ...n.nextKey } } : {}),
    ...(n.mtu !== undefined ? { mtu: n.mtu } : {}),
  };
}

/** The record of a stored token, without its hash. */
export function tokenRecord(t: StoredToken): TokenRecord {
  return {
    id: t.id,
    kind: t.kind,
    expiresAt: t.expiresAt,
    singleUse: t.singleUse,
    used: t.used,
    createdAt: t.createdAt,
  };
}

/** The peers of a view, as a snapshot lists them: nodes oldest first, then clients. */
export function peersOf(view: ClusterView): PeerEntry[] {
  return [...view.nodes().map(nodePeer), ...view.clients().map(clientPeer)];
}

/**
 * A rule's workspace over a view: the records it puts and deletes, the
 * events they cause (derived here, from before and after, so that no rule
 * states them by hand), and drafts of the pools it allocates from.
 */
export class Draft {
  readonly view: ClusterView;
  readonly #nodes = new Map<string, NodeRecord | null>();
  readonly #clients = new Map<string, ClientInfo | null>();
  readonly #tokens = new Map<string, StoredToken | null>();
  readonly #quarantine = new Map<string, QuarantineEntry | null>();
  readonly #flags = new Map<string, string | null>();
  readonly #ipam = new Map<string, IpamDraft>();
  readonly #events: PeerChange[] = [];
  #pools: ClusterPools | undefined;

  constructor(view: ClusterView) {
    this.view = view;
  }

  /** The pools, allocating from drafts over the view's. */
  get pools(): ClusterPools {
    return this.#pools ??= new ClusterPools(this.view.layout, (ns) => {
      let d = this.#ipam.get(ns);
      if (d === undefined) this.#ipam.set(ns, d = new IpamDraft(this.view.ipam(ns)));
      return d;
    });
  }

  /** The node as this draft leaves it. */
  node(name: string): NodeRecord | undefined {
    const mine = this.#nodes.get(name);
    return mine === undefined ? this.view.node(name) : mine ?? undefined;
  }

  putNode(node: NodeRecord): void {
    this.#peer(this.node(node.name), node, nodePeer);
    this.#nodes.set(node.name, node);
  }

  deleteNode(name: string): void {
    this.#peer(this.node(name), undefined, nodePeer);
    this.#nodes.set(name, null);
  }

  putClient(client: ClientInfo): void {
    this.#peer(this.#client(client.name), client, clientPeer);
    this.#clients.set(client.name, client);
  }

  deleteClient(name: string): void {
    this.#peer(this.#client(name), undefined, clientPeer);
    this.#clients.set(name, null);
  }

  putToken(token: StoredToken): void {
    this.#tokens.set(token.id, token);
  }

  deleteToken(id: string): void {
    this.#tokens.set(id, null);
  }

  putQuarantine(entry: QuarantineEntry): void {
    this.#quarantine.set(entry.subnet, entry);
  }

  deleteQuarantine(subnet: string): void {
    this.#quarantine.set(subnet, null);
  }

  setFlag(key: string, value: string): void {
    this.#flags.set(key, value);
  }

  /** The rule's answer, with everything it changed. */
  done<T>(result: T): Planned<T> {
    const ipam = new Map<string, IpamChanges>();
    for (const [ns, d] of this.#ipam) {
      const c = d.changes();
      if (!noIpamChanges(c)) ipam.set(ns, c);
    }
    return {
      result,
      changes: {
        nodes: this.#nodes,
        clients: this.#clients,
        tokens: this.#tokens,
        quarantine: this.#quarantine,
        flags: this.#flags,
        ipam,
        events: this.#events,
      },
    };
  }

  #client(name: string): ClientInfo | undefined {
    const mine = this.#clients.get(name);
    return mine === undefined ? this.view.client(name) : mine ?? undefined;
  }

  #peer<T>(before: T | undefined, after: T | undefined, peer: (x: T) => PeerEntry): void {
    this.#events.push(
      ...peerChanges(before && peer(before), after && peer(after)),
    );
  }
}
