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
