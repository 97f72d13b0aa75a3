/** A client of the node's local API over its unix socket (for `wgcni status` and tests). */
import {
  type CniErrorBody,
  LOCAL_HOST,
  LOCAL_PATHS,
  type RotationAnswer,
  WORKLOAD_PATHS,
  type WorkloadErrorBody,
  type WorkloadView,
} from "./local_types.ts";
import type { WorkloadHandlers } from "./local_app.ts";
import { errorFromResponse } from "./errors.ts";

export interface LocalClient {
  node(): Promise<Record<string, unknown>>;
  peers(): Promise<Record<string, unknown>>;
  allocations(): Promise<Record<string, unknown>>;
  /** Rotates the node's key (peers switch `leadMs` ahead); the node's error rebuilt as its class. */
  rotateKey(leadMs?: number, options?: { pods?: boolean }): Promise<RotationAnswer>;
  /** Any CNI verb with a raw body; returns status and parsed JSON. */
  call(
    verb: "add" | "del" | "check" | "status" | "gc",
    body: unknown,
  ): Promise<{ status: number; body: unknown }>;
  /**
   * The three steps for a workload that brings its own interface, its
   * release, and the list: the steps the app serves, called over the socket.
   */
  readonly workloads: WorkloadHandlers;
  /** Raw request (tests of bad input). */
  raw(path: string, init?: RequestInit): Promise<{ status: number; body: unknown }>;
  close(): void;
}

/** Thrown when the node manager cannot be reached. */
export class LocalUnavailableError extends Error {
  override name = "LocalUnavailableError";
}

export function createLocalClient(socketPath: string): LocalClient {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socketPath } });
  const raw = async (path: string, init: RequestInit = {}) => {
    let res: Response;
    try {
      res = await fetch(LOCAL_HOST + path, { ...init, client } as RequestInit);
    } catch (err) {
      throw new LocalUnavailableError(
        `Cannot reach the node manager at ${socketPath}: ${(err as Error).message}`,
      );
    }
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch { /* not JSON */ }
    return { status: res.status, body };
  };
  const get = async (path: string) => {
    const r = await raw(path);
    if (r.status !== 200) throw new Error(`${path}: ${(r.body as CniErrorBody).msg ?? r.status}`);
    return r.body as Record<string, unknown>;
  };
  /** A workload call: its 200 body, or the node's error rebuilt as its class. */
  const workload = async <T>(path: string, init: RequestInit = {}): Promise<T> => {
    const r = await raw(path, init);
    if (r.status === 200) return r.body as T;
    const body = r.body as Partial<WorkloadErrorBody> | string;
    throw errorFromResponse(
      r.status,
      typeof body === "object" && typeof body.error === "string"
        ? { error: body.error, ...(body.code !== undefined ? { code: body.code } : {}) }
        : { error: `${path}: HTTP ${r.status}` },
    );
  };
  return {
    workloads: {
      allocate: (name) => workload(WORKLOAD_PATHS.allocate(name), { method: "POST" }),
      register: (name, key) =>
        workload(WORKLOAD_PATHS.register(name), {
          method: "PUT",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(key),
        }),
      peers: (name) => workload(WORKLOAD_PATHS.peers(name)),
      release: (name) => workload(WORKLOAD_PATHS.release(name), { method: "DELETE" }),
      list: async () =>
        (await workload<{ workloads: WorkloadView[] }>(LOCAL_PATHS.workloads)).workloads,
    },
    node: () => get(LOCAL_PATHS.node),
    peers: () => get(LOCAL_PATHS.peers),
    allocations: () => get(LOCAL_PATHS.allocations),
    rotateKey: (leadMs, options = {}) =>
      workload<RotationAnswer>(LOCAL_PATHS.rotateKey, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          ...(leadMs === undefined ? {} : { leadMs }),
          ...(options.pods ? { pods: true } : {}),
        }),
      }),
    call: (verb, body) =>
      raw(LOCAL_PATHS[verb], {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      }),
    raw,
    close: () => client.close(),
  };
}
