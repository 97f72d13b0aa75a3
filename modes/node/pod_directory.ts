/**
 * The pod directory: what nodes tell each other about their pods' direct
 * interfaces, over the node mesh. Its wire format (a direct end: a pod's
 * addresses, its direct interface's key and port), the checks every request
 * passes before anything changes, the client (one JSON POST) and the server
 * on the node's own addresses on the node interface. The paths themselves
 * are direct.ts.
 */
import { familyOf } from "../../lib/domain/address.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import { contains, parseAddress, parseCidr } from "../../lib/ipam/mod.ts";
import type { Logger } from "../../lib/log.ts";
import { isKey } from "../../lib/wireguard/mod.ts";
import { gatewayOf } from "./netsetup.ts";
import type { DirectPaths } from "./direct.ts";

/** Requests to another node's pod directory give up after this long. */
export const REQUEST_TIMEOUT_MS = 5_000;

/** One end of a direct path as the directory exchanges it: a pod's addresses and direct socket. */
export interface DirectEnd {
  readonly addresses: readonly string[];
  readonly publicKey: string;
  readonly port: number;
}

/** An error of the pod directory with its HTTP status. */
export class DirectoryError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Whether `address` lies in one of `cidrs` and is not a gateway (host 1) of it. */
export function podAddressIn(address: string, cidrs: readonly string[]): boolean {
  let a;
  try {
    a = parseAddress(address);
  } catch {
    return false;
  }
  return cidrs.some((c) => {
    const cidr = parseCidr(c);
    return cidr.family === a.family && contains(cidr, a) && gatewayOf(c) !== address;
  });
}

/** One request to another node's directory: the answer's JSON, or a DirectoryError with its status. */
export async function postJson(url: string, body: unknown): Promise<unknown> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await res.text();
  if (!res.ok) throw new DirectoryError(res.status, text.trim() || `HTTP ${res.status}`);
  return text ? JSON.parse(text) : undefined;
}

/** A directory body's `from` and `to`, `to` one address. */
export function checkRequest(body: unknown): { from: unknown; to: string } {
  const b = body as { from?: unknown; to?: unknown } | null;
  if (typeof b !== "object" || b === null || typeof b.to !== "string") {
    throw new DirectoryError(400, "Expected a JSON object with from and to");
  }
  return { from: b.from, to: b.to };
}

/** Addresses of a pod on `node`: one or two, one per family, each in its subnets. */
export function checkAddresses(value: unknown, node: PeerEntry): string[] {
  if (
    !Array.isArray(value) || value.length < 1 || value.length > 2 ||
    !value.every((a) => typeof a === "string" && podAddressIn(a, node.allowedIps)) ||
    (value.length === 2 && familyOf(value[0]) === familyOf(value[1]))
  ) {
    throw new DirectoryError(
      403,
      `Node ${node.name} may name only pod addresses of its own subnets (${
        node.allowedIps.join(", ")
      })`,
    );
  }
  return value as string[];
}

/** A direct end as another node sent it; throws when it is malformed. */
export function checkEnd(value: unknown): DirectEnd {
  const e = value as Partial<DirectEnd> | null;
  if (
    typeof e !== "object" || e === null || !Array.isArray(e.addresses) ||
    e.addresses.length < 1 || !e.addresses.every((a) => typeof a === "string") ||
    typeof e.publicKey !== "string" || !isKey(e.publicKey) ||
    typeof e.port !== "number" || !Number.isInteger(e.port) || e.port < 1 || e.port > 65535
  ) {
    throw new DirectoryError(400, "Expected a direct end: addresses, publicKey, port");
  }
  return { addresses: e.addresses, publicKey: e.publicKey, port: e.port };
}

/**
 * Serves the pod directory on each of this node's gateways (its addresses on
 * the node interface) until `signal`. A request is answered only when it
 * comes from another node's gateway: through the mesh, so WireGuard has
 * authenticated the node (a pod can send only from its own /32 and /128,
 * and nftables keeps the port closed to anything not arriving through the
 * node interface).
 */
export function serveDirectory(
  direct: DirectPaths,
  o: { gateways: readonly string[]; port: number; signal: AbortSignal; logger: Logger },
): Promise<void>[] {
  const handler = async (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => {
    const json = (status: number, body: unknown) =>
      new Response(JSON.stringify(body), {
        status,
        headers: { "content-type": "application/json" },
      });
    const node = direct.nodeByGateway(info.remoteAddr.hostname);
    if (node === undefined) {
      return json(403, { error: `${info.remoteAddr.hostname} is not a node of this cluster` });
    }
    const path = new URL(req.url).pathname;
    if (req.method !== "POST") return json(405, { error: "Only POST is served here" });
    let body: unknown;
    try {
      body = await req.json();
    } catch {
      return json(400, { error: "The body is not JSON" });
    }
    try {
      switch (path) {
        case "/v1/direct/prepare":
          return json(200, await direct.prepare(node, body));
        case "/v1/direct/route":
          await direct.routeRequest(node, body);
          return json(200, {});
        case "/v1/direct/remove":
          await direct.removeRequest(node, body);
          return json(200, {});
        case "/v1/direct/lookup":
          return json(200, direct.lookup(node, body));
        default:
          return json(404, { error: `No such path: ${path}` });
      }
    } catch (err) {
      if (err instanceof DirectoryError) return json(err.status, { error: err.message });
      o.logger.warn("pod directory: {path} from {node} failed: {error}", {
        path,
        node: node.name,
        error: err,
      });
      return json(500, { error: (err as Error).message });
    }
  };
  return o.gateways.map((hostname) =>
    Deno.serve({ hostname, port: o.port, signal: o.signal, onListen() {} }, handler).finished
  );
}
