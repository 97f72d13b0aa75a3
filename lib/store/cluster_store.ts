/**
 * The cluster manager's store: nodes, external clients, their subnets and
 * addresses, join and admin tokens, and the event log the watch stream
 * replays from. Synchronous on purpose: each call is one transaction that no
 * other request can interleave with, and commits before it returns.
 *
 * Secrets (tokens, node credentials) reach the store in plain text and are
 * kept only as SHA-256 hashes.
 */
import { createHash, randomBytes } from "node:crypto";
import type {
  ClientInfo,
  NextKey,
  NodeInfo,
  NodeReport,
  PeerEntry,
  PeerSnapshot,
  TokenInfo,
  WatchEvent,
} from "../domain/cluster.ts";

/** The address pools a cluster was created with. */
export interface PoolConfig {
  /** One pod pool per family, IPv4 first once normalised. */
  readonly podCidrs: readonly string[];
  /** One client pool per family (may be empty: no external clients). */
  readonly clientCidrs: readonly string[];
  readonly nodeMaskV4: number;
  readonly nodeMaskV6: number;
}

/** Who is calling, as the API established it from the bearer token. */
export type Principal =
  | { readonly kind: "admin" }
  | { readonly kind: "join"; readonly tokenId: string }
  | { readonly kind: "node"; readonly name: string };

/** A token as stored (without its secret). */
export interface TokenRecord extends TokenInfo {
  readonly kind: "admin" | "join";
}

/** What a registration did. */
export interface RegisterOutcome {
  readonly node: NodeInfo;
  /** True when the node did not exist before (or was reclaimed from its grace period). */
  readonly created: boolean;
}

/** Use of one address pool. */
export interface PoolUsage {
  readonly pool: "pod" | "client";
  readonly family: 4 | 6;
  readonly cidr: string;
  /** Subnets (pod pool) or addresses (client pool) handed out, quarantined ones included. */
  readonly used: number;
  readonly total: number;
}

/** Receives every committed change, in revision order. */
export type EventListener = (event: WatchEvent) => void;

/** A value, or a promise of it: the embedded store answers at once, etcd over the network. */
export type Awaitable<T> = T | Promise<T>;

/** Counters of a store's own work, for /metrics. */
export interface StoreStats {
  /** Transactions retried because another writer changed what they read (etcd only). */
  readonly conflicts: number;
}

/** A complete copy of a store, secrets as hashes: what `wgcni cluster migrate` moves. */
export interface StoreDump {
  readonly pools: PoolConfig;
  readonly flags: Readonly<Record<string, string>>;
  readonly tokens: readonly (TokenRecord & { readonly hash: string })[];
  readonly nodes: readonly (NodeInfo & { readonly credentialHash: string })[];
  readonly clients: readonly ClientInfo[];
  /** Subnets of removed nodes still in their grace period. */
  readonly quarantine: readonly {
    readonly subnet: string;
    readonly name: string;
    readonly publicKey: string;
    readonly releaseAt: number;
  }[];
}

/** The cluster manager's state. Every method is one atomic, durable transaction. */
export interface ClusterStore {
  readonly pools: PoolConfig;
  /** The revision of the last committed peer change (0 for a new store). */
  revision(): number;
  /** Every peer at the current revision. */
  snapshot(): PeerSnapshot;
  /**
   * The changes after `revision`, oldest first, or undefined when some of
   * them have been pruned (or `revision` is ahead of the store).
   */
  eventsSince(revision: number): readonly WatchEvent[] | undefined;
  /** Calls `listener` after each committed change; returns the unsubscribe function. */
  listen(listener: EventListener): () => void;

  /** Sets (creates or replaces) a token with a chosen id, e.g. the admin token given by flag. */
  putToken(
    input: { id: string; kind: "admin" | "join"; secret: string; now: number },
  ): Awaitable<TokenRecord>;
  /** Creates a join token with a fresh id. */
  createToken(
    input: { secret: string; now: number; ttlMs?: number; singleUse?: boolean },
  ): Awaitable<TokenRecord>;
  /** The token whose secret this is, if any (expired and used ones too). */
  findToken(secret: string): TokenRecord | undefined;
  /** Join tokens, oldest first. */
  listTokens(): readonly TokenRecord[];
  /** Removes a join token. Throws NotFoundError. */
  revokeToken(id: string): Awaitable<void>;
  /** A flag of the store's own bookkeeping (e.g. "bootstrapped"). */
  getFlag(key: string): string | undefined;
  setFlag(key: string, value: string): Awaitable<void>;
  /** Sets a flag only when it is absent; true when this call set it. */
  initFlag(key: string, value: string): Awaitable<boolean>;

  /**
   * Registers a node or registers it again. Allocates one subnet per pod pool
   * for a new name; the same name and key keep their subnets. A different key
   * for an existing name needs `principal` to be that node or admin
   * (ConflictError otherwise). A join token principal is checked again and
   * consumed (single use) in the same transaction.
   */
  registerNode(
    input: RegisterInput,
    options: { principal: Principal; credential: string; now: number },
  ): Awaitable<RegisterOutcome>;
  /** The node this credential belongs to. */
  findNodeByCredential(credential: string): NodeInfo | undefined;
  getNode(name: string): NodeInfo | undefined;
  listNodes(): readonly NodeInfo[];
  /**
   * Revokes a node's credential so that a join token may register the name
   * once more (an operator's recovery for a node that lost its credential).
   * Subnets, key and endpoint stay, so the data plane does not change.
   * Throws NotFoundError.
   */
  resetNode(name: string, now: number): Awaitable<NodeInfo>;
  /**
   * Records what node `by` saw a NAT'd node's handshakes come from as its
   * endpoint. Throws NotFoundError, AuthError (the node itself), ConflictError
   * (a node not behind NAT).
   */
  observeEndpoint(name: string, endpoint: string, by: Principal): Awaitable<NodeInfo>;
  /**
   * Announces the node's next key and when peers switch to it (see
   * {@linkcode NextKey}). Throws AuthError (not the node itself),
   * NotFoundError, ConflictError (a key held, the current key, a switch
   * already due), RangeError (a moment not ahead, or over an hour ahead).
   */
  announceKey(
    name: string,
    next: NextKey,
    options: { principal: Principal; now: number },
  ): Awaitable<NodeInfo>;
  /** Renews a node's lease. Throws NotFoundError. */
  /** Also keeps what the node reported (its pods, whether it is ready), when it says. */
  heartbeat(name: string, now: number, report?: NodeReport): Awaitable<NodeInfo>;
  /** Removes a node; its subnets return to the pool after the grace period. Throws NotFoundError. */
  removeNode(name: string, now: number): Awaitable<void>;
  /**
   * Removes nodes not seen since `now - leaseMs` and returns their names;
   * also returns subnets whose grace period ended to the pool.
   */
  expire(now: number, leaseMs: number): Awaitable<readonly string[]>;

  /** Registers an external client with one address per client pool. */
  addClient(input: { name: string; publicKey: string }, now: number): Awaitable<ClientInfo>;
  getClient(name: string): ClientInfo | undefined;
  listClients(): readonly ClientInfo[];
  /** Throws NotFoundError. */
  removeClient(name: string): Awaitable<void>;

  usage(): readonly PoolUsage[];
  /** Runs a cheap read to show the store answers (for /readyz). */
  ping(): Awaitable<void>;
  /**
   * Waits until this replica's view holds every change committed anywhere
   * before the call (a no-op for the embedded store, which is the only writer).
   */
  settle(): Awaitable<void>;
  /**
   * Resolves once every write this replica accepted so far is durable;
   * rejects (UnavailableError) when committing them failed. A store that
   * commits each write before returning resolves at once; the embedded
   * store with group commit commits the writes of one event-loop turn
   * together, so callers answer only after this.
   */
  committed(): Awaitable<void>;
  stats(): StoreStats;
  /** Everything in the store, for migration. */
  dump(): StoreDump;
  close(): Awaitable<void>;
}

/** A fresh random secret: 32 bytes, base64url (43 characters). */
export function newSecret(): string {
  return randomBytes(32).toString("base64url");
}

/**
 * The stored credential hash of a node an admin reset: it matches no
 * credential (hashes are hex), and it lets a join token register the name once.
 */
export function resetCredentialHash(): string {
  return `reset:${randomBytes(16).toString("hex")}`;
}

/** True for a credential hash set by {@linkcode resetCredentialHash}. */
export function isResetHash(hash: string): boolean {
  return hash.startsWith("reset:");
}

/** A short random id for tokens (12 hex digits). */
export function newTokenId(): string {
  return randomBytes(6).toString("hex");
}

/** The form a secret is kept in: SHA-256, hex. */
export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

/** What a node registers with (POST /v1/nodes), and what the manager saw of the request. */
export interface RegisterInput {
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  /** The revision the node last applied (a store behind it is refused). */
  readonly revision?: number | undefined;
  /** The node found its endpoint itself (no `--endpoint`): it may be behind NAT. */
  readonly detectEndpoint?: boolean | undefined;
  /** The address the request came from. */
  readonly seenFrom?: string;
  /** The MTU of the node's underlay link. */
  readonly mtu?: number | undefined;
}

/** The peer entry of a node. */
export function nodePeer(node: NodeInfo): PeerEntry {
  return {
    kind: "node",
    name: node.name,
    publicKey: node.publicKey,
    endpoint: node.endpoint,
    allowedIps: node.subnets,
    ...(node.nat ? { nat: true } : {}),
    ...(node.nextKey ? { nextKey: node.nextKey } : {}),
    ...(node.mtu !== undefined ? { mtu: node.mtu } : {}),
  };
}

/** The peer entry of an external client. */
export function clientPeer(client: ClientInfo): PeerEntry {
  return {
    kind: "client",
    name: client.name,
    publicKey: client.publicKey,
    allowedIps: client.addresses,
  };
}
