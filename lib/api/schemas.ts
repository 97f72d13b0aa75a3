/**
 * Schemas of the cluster API's inputs: request bodies, path parameters and
 * queries. Parsing here is the edge; handlers below see typed, normalised
 * values only (an endpoint in canonical form, a name in lowercase rules).
 */
import { parseHostPort } from "../domain/address.ts";
import { nameProblem } from "../domain/names.ts";
import { z } from "zod";
import ipaddr from "ipaddr.js";
import { isKey, isLowOrderKey } from "../wireguard/mod.ts";
import { parseAddress, specialRangeOf } from "../ipam/mod.ts";

export { MAX_NAME_LENGTH, nameProblem } from "../domain/names.ts";

/** A node or client name (see {@linkcode nameProblem}). */
export const nameSchema = z.string({ error: "must be a string" }).superRefine((name, ctx) => {
  const problem = nameProblem(name);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
});

/** A WireGuard public key: base64 of 32 bytes, and not a point of small order. */
export const publicKeySchema = z.string({ error: "must be a string" }).superRefine((key, ctx) => {
  if (!isKey(key)) {
    ctx.addIssue({
      code: "custom",
      message: "must be a WireGuard public key (base64 of 32 bytes, 44 characters)",
    });
  } else if (isLowOrderKey(key)) {
    ctx.addIssue({
      code: "custom",
      message:
        "is a low-order Curve25519 point: every shared secret with it is predictable, so it is no key",
    });
  }
});

/** A parsed underlay endpoint. */
export interface Endpoint {
  readonly address: string;
  readonly family: 4 | 6;
  readonly port: number;
}

/** Writes an endpoint as `IP:PORT` or `[IPv6]:PORT`. */
export function formatEndpoint(ep: Endpoint): string {
  return ep.family === 6 ? `[${ep.address}]:${ep.port}` : `${ep.address}:${ep.port}`;
}

/**
 * Parses `IP:PORT` or `[IPv6]:PORT` (an address, not a host name), refusing
 * addresses a peer cannot be reached at (unspecified, multicast, broadcast).
 * Throws RangeError saying what is wrong.
 */
export function parseEndpoint(text: string): Endpoint {
  const { host, port } = parseHostPort(text);
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    addr = ipaddr.parse(host);
  } catch {
    throw new RangeError(`"${host}" is not an address`);
  }
  if (addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
    addr = (addr as ipaddr.IPv6).toIPv4Address();
  }
  const address = addr.toString();
  const special = specialRangeOf(parseAddress(address));
  if (special !== undefined) {
    throw new RangeError(
      `${address} is in ${special.what} ${special.text}, not an address another machine can reach`,
    );
  }
  return { address, family: addr.kind() === "ipv6" ? 6 : 4, port };
}

/** An endpoint, normalised to canonical text. */
export const endpointSchema = z.string({ error: "must be a string" }).transform((text, ctx) => {
  try {
    return formatEndpoint(parseEndpoint(text));
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
    return z.NEVER;
  }
});

/** A whole number; `error` says what it must be otherwise. */
function wholeNumber(error: string) {
  return z.number({ error }).int({ error: "must be a whole number" });
}

/** POST /v1/nodes. */
export const registerSchema = z.object({
  name: nameSchema,
  publicKey: publicKeySchema,
  endpoint: endpointSchema,
  revision: wholeNumber("must be a revision number").nonnegative({ error: "must not be negative" })
    .optional(),
  detectEndpoint: z.boolean({ error: "must be true or false" }).optional(),
  mtu: wholeNumber("must be the MTU of the node's underlay link").min(576, {
    error: "must be at least 576",
  }).max(65535, { error: "must be at most 65535" }).optional(),
}, { error: "must be a JSON object" });

/** POST /v1/nodes/:name/endpoint. */
export const observedEndpointSchema = z.strictObject({
  endpoint: endpointSchema,
}, { error: "must be a JSON object" });

/** POST /v1/nodes/:name/key: the node's next key and when peers switch to it. */
export const nextKeySchema = z.strictObject({
  publicKey: publicKeySchema,
  switchAt: wholeNumber("must be milliseconds since the epoch").positive({
    error: "must be milliseconds since the epoch",
  }),
}, { error: "must be a JSON object" });

/** POST /v1/relay: the node to be relayed to. */
export const relaySchema = z.strictObject({
  peer: nameSchema,
}, { error: "must be a JSON object" });

/** POST /v1/clients. */
export const clientSchema = z.object({
  name: nameSchema,
  publicKey: publicKeySchema,
}, { error: "must be a JSON object" });

/** POST /v1/nodes/:name/heartbeat (optional): what the node reports. */
export const heartbeatSchema = z.strictObject({
  pods: z.number({ error: "must be a number" }).int("must be whole").min(0, "must be 0 or more"),
  ready: z.boolean({ error: "must be true or false" }),
}, { error: "must be a JSON object" });

/** Longest token lifetime: ten years. */
export const MAX_TTL_SECONDS = 10 * 366 * 24 * 3600;

/** POST /v1/tokens. */
export const tokenSchema = z.object({
  ttlSeconds: z.number({ error: "must be a number of seconds" }).int("must be whole seconds")
    .min(1, "must be at least 1 second").max(MAX_TTL_SECONDS, "must be at most ten years")
    .optional(),
  singleUse: z.boolean({ error: "must be true or false" }).optional(),
}, { error: "must be a JSON object" });

/** `:name` of /v1/nodes/:name and /v1/clients/:name. */
export const nameParamSchema = z.object({ name: nameSchema });

/** `:id` of /v1/tokens/:id. */
export const tokenIdParamSchema = z.object({
  id: z.string().regex(/^[a-z0-9-]{1,64}$/, "is not a token id"),
});

/** GET /v1/watch?since=REV. */
export const watchQuerySchema = z.object({
  since: z.string().regex(/^\d{1,15}$/, "must be a revision (a whole number)").transform(Number)
    .optional(),
});

/** Renders zod issues as one line: `name: must be lowercase; endpoint: …`. */
export function describeIssues(error: z.core.$ZodError): string {
  return error.issues.map((issue) => {
    const path = issue.path.map(String).join(".");
    return path === "" ? issue.message : `${path}: ${issue.message}`;
  }).join("; ");
}
