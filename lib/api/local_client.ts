/** A client of the node's local API over its unix socket (for `wgcni status` and tests). */
import { type CniErrorBody, LOCAL_HOST, LOCAL_PATHS } from "./local_types.ts";

export interface LocalClient {
  node(): Promise<Record<string, unknown>>;
  peers(): Promise<Record<string, unknown>>;
  allocations(): Promise<Record<string, unknown>>;
  /** Any CNI verb with a raw body; returns status and parsed JSON. */
  call(
    verb: "add" | "del" | "check" | "status" | "gc",
    body: unknown,
  ): Promise<{ status: number; body: unknown }>;
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
  return {
    node: () => get(LOCAL_PATHS.node),
    peers: () => get(LOCAL_PATHS.peers),
    allocations: () => get(LOCAL_PATHS.allocations),
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
