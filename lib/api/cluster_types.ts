/**
 * Entities of the cluster API (`/v1` of `wgcni cluster serve`), shared by the
 * server, its typed client, the node manager and the CLI.
 *
 * Routes (all but /healthz, /readyz, /metrics need `Authorization: Bearer T`):
 *   POST   /v1/nodes                 join token | node credential | admin → RegisterResponse
 *   GET    /v1/nodes                 admin → { nodes: NodeInfo[] }
 *   DELETE /v1/nodes/:name           that node's credential | admin
 *   POST   /v1/nodes/:name/heartbeat that node's credential | admin (renews the lease)
 *   POST   /v1/nodes/:name/endpoint  another node's credential | admin {endpoint} → { node }
 *                                    (where that node's handshakes came from; NAT'd nodes only)
 *   POST   /v1/nodes/:name/key       that node's credential {publicKey, switchAt} → { node }
 *                                    (its next key; peers switch to it at switchAt)
 *   POST   /v1/relay                 node credential {peer} → { endpoint } (the relay port this
 *                                    node sends to for that peer; 404 when no relay runs)
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

// The API carries the cluster's domain entities as they are.
export type * from "../domain/cluster.ts";
import type { ClientInfo, ClusterInfo, NodeInfo, PeerEntry, TokenInfo } from "../domain/cluster.ts";

/** The response header naming the cluster a manager answers for (on every answer). */
export const CLUSTER_HEADER = "wgcni-cluster";

/** POST /v1/nodes body. */
export interface RegisterRequest {
  readonly name: string;
  readonly publicKey: string;
  /** The underlay endpoint others reach this node at: `IP:PORT` or `[IPv6]:PORT`. */
  readonly endpoint: string;
  /**
   * The highest revision the node already applied, if any: a manager whose
   * store is behind it lost committed changes and refuses (StaleStoreError,
   * HTTP 409) instead of registering the node into the older state.
   */
  readonly revision?: number;
  /**
   * The node found `endpoint` itself (no `--endpoint`): when the manager sees
   * the request come from another address of that family, the node is behind
   * NAT and others get the address seen (see NodeInfo.nat).
   */
  readonly detectEndpoint?: boolean;
  /** The MTU of the node's underlay link (see NodeInfo.mtu). */
  readonly mtu?: number;
}

/** POST /v1/nodes/:name/endpoint body. */
export interface ObservedEndpoint {
  readonly endpoint: string;
}

export interface RegisterResponse {
  readonly node: NodeInfo;
  /** The node credential for every later call of this node (shown once per registration). */
  readonly credential: string;
  readonly cluster: ClusterInfo;
}

export interface ClientResponse {
  readonly client: ClientInfo;
  /** Every node, to write the client's wg-quick peers. */
  readonly nodes: readonly PeerEntry[];
  readonly cluster: ClusterInfo;
}

export interface TokenCreated extends TokenInfo {
  /** The plain token, shown once. */
  readonly token: string;
}
