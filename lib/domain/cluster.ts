/**
 * What a cluster is made of: nodes, external clients, the peer entries every
 * node follows and the changes to them, tokens. The store, the rules, the
 * API and the node manager all speak these; the API's request and answer
 * shapes (lib/api/cluster_types.ts) are built from them.
 */

/** Address families wgcni speaks. */
export type Family = 4 | 6;

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
  /**
   * True when the node joined without `--endpoint` and the manager saw it
   * come from another address of the same family: it is behind NAT, and
   * `endpoint` is the address seen from outside (first the manager's guess,
   * the port kept; then what another node's interface saw its handshakes
   * come from).
   */
  readonly nat?: boolean;
  /** The key the node switches to, and when (see {@linkcode NextKey}). */
  readonly nextKey?: NextKey;
  /**
   * The MTU of the node's underlay link, as it reported: what reaches it
   * can be no larger, whatever other nodes' own links carry.
   */
  readonly mtu?: number;
}

/**
 * A node's next public key and the moment (milliseconds since the epoch)
 * every node moves the node's allowed IPs to it. Until then peers hold it
 * as an extra peer with no allowed IPs, so that the node's first handshake
 * with it is answered; at that moment the node takes its new private key.
 * The node then registers with the new key, and the old one is gone.
 */
export interface NextKey {
  readonly publicKey: string;
  readonly switchAt: number;
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

/** One peer every node should have (another node or an external client). */
export interface PeerEntry {
  readonly kind: "node" | "client";
  readonly name: string;
  readonly publicKey: string;
  /** Absent for clients (they dial in). */
  readonly endpoint?: string;
  /** A node's subnets; a client's /32 and /128. */
  readonly allowedIps: readonly string[];
  /** A node behind NAT (see {@linkcode NodeInfo.nat}): its endpoint is what was seen of it. */
  readonly nat?: boolean;
  /** A node's key rotation under way (see {@linkcode NextKey}). */
  readonly nextKey?: NextKey;
  /** A node's underlay link MTU (see {@linkcode NodeInfo.mtu}). */
  readonly mtu?: number;
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

export interface TokenInfo {
  readonly id: string;
  readonly expiresAt: number | null;
  readonly singleUse: boolean;
  readonly used: boolean;
  readonly createdAt: number;
}
