/**
 * The node manager's local API (HTTP over a unix socket, default
 * /run/wgcni/wgcni.sock): the contract between the CNI plugin, `wgcni status`
 * and the node manager. Types only, so the plugin's start-up path stays lean.
 *
 * Every CNI verb is `POST LOCAL_PATHS.<verb>` with a {@linkcode CniRequest}.
 * Success is 200 with the body named per verb; failure is a non-2xx status
 * with a {@linkcode CniErrorBody} the plugin prints as is.
 */

export type {
  Attachment,
  CniDns,
  CniInterface,
  CniIp,
  CniResult,
  CniRoute,
} from "../domain/cni.ts";
import type { Attachment, CniResult } from "../domain/cni.ts";

/** Paths of the local API. */
export const LOCAL_PATHS = {
  add: "/v1/cni/add",
  del: "/v1/cni/del",
  check: "/v1/cni/check",
  status: "/v1/cni/status",
  gc: "/v1/cni/gc",
  /** GET: the node, its backend, subnets (for `wgcni status`). */
  node: "/v1/node",
  /** GET: peers of the node interface as the kernel has them. */
  peers: "/v1/peers",
  /** GET: address reservations. */
  allocations: "/v1/allocations",
  /** POST {leadMs?, pods?}: rotate the node's key (and every pod's, with pods) (see {@linkcode RotationAnswer}). */
  rotateKey: "/v1/node/rotate-key",
  /** GET: the workloads that bring their own WireGuard interface. */
  workloads: "/v1/workloads",
} as const;

/**
 * The paths of one workload that brings its own WireGuard interface, in the
 * order of the seed's three steps, and its release. NAME follows the rules of
 * node names; a bad one is 400.
 */
export const WORKLOAD_PATHS = {
  /** POST, no body: allocate its addresses (idempotent) → {@linkcode WorkloadAddresses}. */
  allocate: (name: string) => `/v1/workloads/${encodeURIComponent(name)}/addresses`,
  /** PUT {@linkcode WorkloadKeyRequest}: its public key becomes a peer of the node → {@linkcode WorkloadView}. */
  register: (name: string) => `/v1/workloads/${encodeURIComponent(name)}/key`,
  /** GET: its peers → {@linkcode WorkloadPeers}. */
  peers: (name: string) => `/v1/workloads/${encodeURIComponent(name)}/peers`,
  /** DELETE: undo all of it → {@linkcode WorkloadReleased}; 200 when it was never known too. */
  release: (name: string) => `/v1/workloads/${encodeURIComponent(name)}`,
} as const;

/**
 * Host part of URLs on the socket. An address literal: the HTTP client
 * resolves a host name even when it connects through the unix socket, and
 * without a reachable resolver (a node namespace without DNS) that waits
 * for the resolver's timeout.
 */
export const LOCAL_HOST = "http://127.0.0.1";

/** One CNI invocation as the plugin parsed it. */
export interface CniRequest {
  /** CNI_CONTAINERID (validated by the plugin). */
  readonly containerId: string;
  /** CNI_IFNAME (validated by the plugin). */
  readonly ifname: string;
  /** CNI_NETNS: a path; "" when the runtime gave none (DEL may). */
  readonly netns: string;
  /** CNI_ARGS as key/value pairs (IgnoreUnknown already applied). */
  readonly args: Readonly<Record<string, string>>;
  /**
   * The network configuration from stdin, as JSON: `name`, `cniVersion`,
   * `prevResult` (chaining, CHECK), `runtimeConfig`, and for GC
   * `cni.dev/valid-attachments`. prevResult is already converted to 1.1.0 shape.
   */
  readonly config: Readonly<Record<string, unknown>>;
}

/** A CNI error as the spec defines it (the plugin adds cniVersion). */
export interface CniErrorBody {
  readonly code: number;
  readonly msg: string;
  readonly details?: string;
}

/** 200 body of ADD. */
export interface AddResponse {
  readonly result: CniResult;
}

/** 200 body of GC. */
export interface GcResponse {
  readonly released: readonly Attachment[];
  readonly failed: readonly (Attachment & { readonly msg: string })[];
}

/** 200 body of STATUS (503 with CniErrorBody code 50/51 when not ready). */
export interface StatusResponse {
  readonly ready: true;
}

/** 200 body of a workload's allocation (step one). */
export interface WorkloadAddresses {
  readonly name: string;
  /** Its /32 and /128, IPv4 first. */
  readonly addresses: readonly string[];
  /** True when this call allocated them, false when the workload had them already. */
  readonly created: boolean;
}

/** Body of a workload's registration (step two): a public key only, never a private one. */
export interface WorkloadKeyRequest {
  readonly publicKey: string;
  /**
   * The UDP port of the workload's WireGuard socket on the node's loopback
   * (a workload whose socket lives in the node's namespace): the node then
   * sends to 127.0.0.1:PORT. Without it the workload dials in.
   */
  readonly endpointPort?: number;
}

/** A workload as the node keeps it. */
export interface WorkloadView {
  readonly name: string;
  readonly phase: "allocated" | "registering" | "ready" | "releasing";
  /** Its /32 and /128, IPv4 first. */
  readonly addresses: readonly string[];
  readonly publicKey?: string;
  readonly endpointPort?: number;
}

/** One peer a workload's interface is to have. */
export interface WorkloadPeer {
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  /** What to send to it: the default routes (everything through the node). */
  readonly allowedIps: readonly string[];
  /** Seconds; the workload keeps its session with the node warm (it may be behind NAT). */
  readonly persistentKeepalive: number;
}

/** 200 body of a workload's peers (step three): what it configures its interface with. */
export interface WorkloadPeers {
  readonly name: string;
  /** Its /32 and /128, IPv4 first. */
  readonly addresses: readonly string[];
  readonly mtu: number;
  /** The node, its hub; more once direct paths exist. */
  readonly peers: readonly WorkloadPeer[];
  /** The cluster's pools (pods and clients): AllowedIPs for a workload that keeps its own default route. */
  readonly clusterCidrs: readonly string[];
}

/** 200 body of a workload's release. */
export interface WorkloadReleased {
  readonly name: string;
  /** False when nothing was known of it (already released, or never allocated). */
  readonly released: boolean;
}

/** Non-2xx body of the workload paths. */
export interface WorkloadErrorBody {
  readonly error: string;
  /** The error's class on the node (ConflictError, NotFoundError, TypeError, …). */
  readonly code?: string;
}

/** What a node key rotation did. */
export interface RotationAnswer {
  readonly from: string;
  readonly to: string;
  /** Milliseconds since the epoch: when every node switched. */
  readonly switchAt: number;
  /** Pods whose node peer moved to the new key. */
  readonly pods: number;
  /** Workloads with their own interface, which take the new key themselves. */
  readonly workloads: number;
  /** Pods given a new key of their own (when asked to). */
  readonly podKeys?: number;
}
