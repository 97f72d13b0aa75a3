/**
 * Entities of the cluster API (`/v1` of `wgcni cluster serve`), shared by the
 * server, its typed client, the node manager and the CLI.
 *
 * Routes (all but /healthz, /readyz, /metrics need `Authorization: Bearer T`):
 *   POST   /v1/nodes                 join token | node credential | admin → RegisterResponse
 *   GET    /v1/nodes                 admin → { nodes: NodeInfo[] }
 *   DELETE /v1/nodes/:name           that node's credential | admin
 *   POST   /v1/nodes/:name/heartbeat that node's credential | admin (renews the lease)
 *   GET    /v1/peers                 node credential | admin → PeerSnapshot
 *   GET    /v1/watch?since=REV       node credential | admin → text/event-stream of WatchEvent
 *                                    (event: snapshot | delta | ping; data: JSON; id: revision)
 *   POST   /v1/clients               admin {name, publicKey} → ClientResponse
 *   GET    /v1/clients               admin → { clients: ClientInfo[] }
 *   DELETE /v1/clients/:name         admin
 *   POST   /v1/tokens                admin {ttlSeconds?, singleUse?} → TokenCreated
 *   GET    /v1/tokens                admin → { tokens: TokenInfo[] }
 *   DELETE /v1/tokens/:id            admin
 * Errors: { error: string } with 400 bad input, 401 no credential, 403 wrong
 * credential, 404 not found, 409 conflict, 503 pool exhausted / store unavailable.
 */

/** The response header naming the cluster a manager answers for (on every answer). */
export const CLUSTER_HEADER = "wgcni-cluster";

/** Address families wgcni speaks. */
export type Family = 4 | 6;

/** POST /v1/nodes body. */
export interface RegisterRequest {
  readonly name: string;
  readonly publicKey: string;
  /** The underlay endpoint others reach this node at: `IP:PORT` or `[IPv6]:PORT`. */
  readonly endpoint: string;
}

/** A registered node. */
export interface NodeInfo {
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  /** One subnet per configured family, IPv4 first, e.g. ["10.244.3.0/24", "fd00:10:244:3::/64"]. */
  readonly subnets: readonly string[];
  /** Milliseconds since the epoch. */
  readonly registeredAt: number;
  readonly lastSeenAt: number;
  /** Pods attached on the node, as it last reported (with its lease renewal). */
  readonly pods?: number;
  /** Whether the node could take pods (its CNI STATUS), as it last reported. */
  readonly ready?: boolean;
}

/** What a node reports when it renews its lease. */
export interface NodeReport {
  readonly pods: number;
  readonly ready: boolean;
}

/** Cluster-wide facts a node needs to set up routes, and which cluster this is. */
export interface ClusterInfo {
  /**
   * The cluster's identity, fixed when it was created: a node that sees
   * another one here is talking to a manager whose store was replaced.
   */
  readonly id: string;
  readonly podCidrs: readonly string[];
  readonly clientCidrs: readonly string[];
}

export interface RegisterResponse {
  readonly node: NodeInfo;
  /** The node credential for every later call of this node (shown once per registration). */
  readonly credential: string;
  readonly cluster: ClusterInfo;
}

/** One peer every node should have (another node or an external client). */
export interface PeerEntry {
  readonly kind: "node" | "client";
  readonly name: string;
  readonly publicKey: string;
  /** Absent for clients (they dial in). */
  readonly endpoint?: string;
  /** A node's subnets; a client's /32 and /128. */
  readonly allowedIps: readonly string[];
}

/** GET /v1/peers. */
export interface PeerSnapshot {
  readonly revision: number;
  readonly peers: readonly PeerEntry[];
}

/** One event on the watch stream. */
export type WatchEvent =
  | { readonly type: "snapshot"; readonly revision: number; readonly peers: readonly PeerEntry[] }
  | { readonly type: "upsert"; readonly revision: number; readonly peer: PeerEntry }
  | {
    readonly type: "delete";
    readonly revision: number;
    readonly kind: PeerEntry["kind"];
    readonly name: string;
    readonly publicKey: string;
  };

/** An external client. */
export interface ClientInfo {
  readonly name: string;
  readonly publicKey: string;
  /** Its /32 and /128 from the client pool. */
  readonly addresses: readonly string[];
  readonly createdAt: number;
}

export interface ClientResponse {
  readonly client: ClientInfo;
  /** Every node, to write the client's wg-quick peers. */
  readonly nodes: readonly PeerEntry[];
  readonly cluster: ClusterInfo;
}

export interface TokenInfo {
  readonly id: string;
  readonly expiresAt: number | null;
  readonly singleUse: boolean;
  readonly used: boolean;
  readonly createdAt: number;
}

export interface TokenCreated extends TokenInfo {
  /** The plain token, shown once. */
  readonly token: string;
}
