/**
 * Parsing a CNI result of any supported version (a chained `prevResult`)
 * into the 1.1.0 shape, checking every field wgcni reads or echoes: ips
 * with an address and prefix, a gateway of the same family and an
 * interface that indexes `interfaces`; interfaces with names; routes with a
 * destination and a gateway of its family; dns as lists of strings.
 * Fields the spec does not define are dropped. Dependency-free: the plugin
 * path imports it.
 */
import type { CniDns, CniInterface, CniIp, CniResult, CniRoute } from "../domain/cni.ts";
import { addressFamily, cidrFamily } from "../domain/address.ts";

type Json = Record<string, unknown>;

export { addressFamily, cidrFamily } from "../domain/address.ts";

function fail(where: string, what: string): never {
  throw new TypeError(where === "" ? `expected a JSON object, ${what}` : `${where} ${what}`);
}

/** The path of a field below `where`. */
function at(where: string, key: string): string {
  return where === "" ? key : `${where}.${key}`;
}

function object(v: unknown, where: string): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    fail(
      where,
      where === "" ? `got ${Array.isArray(v) ? "a list" : typeof v}` : "must be an object",
    );
  }
  return v as Json;
}

function list(v: unknown, where: string): unknown[] {
  if (!Array.isArray(v)) fail(where, "must be a list");
  return v;
}

function string(v: unknown, where: string): string {
  if (typeof v !== "string") fail(where, "must be a string");
  return v;
}

function whole(v: unknown, where: string, max = 2 ** 32 - 1): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max) {
    fail(where, `must be a whole number from 0 to ${max}`);
  }
  return v;
}

/** Copies the optional field `key` through `parse` when it is present (null is absent, as Go's encoder meant it). */
function optional<T>(o: Json, key: string, where: string, parse: (v: unknown, w: string) => T) {
  return o[key] === undefined || o[key] === null ? {} : { [key]: parse(o[key], at(where, key)) };
}

function present(v: unknown): boolean {
  return v !== undefined && v !== null;
}

function parseInterface(v: unknown, where: string): CniInterface {
  const o = object(v, where);
  const name = string(o.name, at(where, "name"));
  if (name === "") fail(at(where, "name"), "must not be empty");
  return {
    name,
    ...optional(o, "mac", where, string),
    ...optional(o, "mtu", where, (m, w) => whole(m, w, 65535)),
    ...optional(o, "sandbox", where, string),
    ...optional(o, "socketPath", where, string),
    ...optional(o, "pciID", where, string),
  };
}

function parseIp(v: unknown, where: string, interfaces: number): CniIp {
  const o = object(v, where);
  const address = string(o.address, at(where, "address"));
  const family = cidrFamily(address);
  if (family === undefined) {
    fail(at(where, "address"), `${JSON.stringify(address)} is not an address with a prefix length`);
  }
  if (present(o.version) && o.version !== String(family)) {
    fail(at(where, "version"), `${JSON.stringify(o.version)} does not match ${address}`);
  }
  const out: { address: string; gateway?: string; interface?: number } = { address };
  if (present(o.gateway)) {
    const gw = string(o.gateway, at(where, "gateway"));
    if (addressFamily(gw) !== family) {
      fail(at(where, "gateway"), `${JSON.stringify(gw)} is not an IPv${family} address`);
    }
    out.gateway = gw;
  }
  if (present(o.interface)) {
    const i = o.interface;
    if (typeof i !== "number" || !Number.isInteger(i) || i < 0 || i >= interfaces) {
      fail(
        at(where, "interface"),
        `${JSON.stringify(i)} is not an index into interfaces (${interfaces} given)`,
      );
    }
    out.interface = i;
  }
  return out;
}

function parseRoute(v: unknown, where: string): CniRoute {
  const o = object(v, where);
  const dst = string(o.dst, at(where, "dst"));
  const family = cidrFamily(dst);
  if (family === undefined) {
    fail(at(where, "dst"), `${JSON.stringify(dst)} is not a network with a prefix length`);
  }
  const out: Json = { dst };
  if (present(o.gw)) {
    const gw = string(o.gw, at(where, "gw"));
    if (addressFamily(gw) !== family) {
      fail(at(where, "gw"), `${JSON.stringify(gw)} is not an IPv${family} address`);
    }
    out.gw = gw;
  }
  for (const k of ["mtu", "advmss", "priority", "table"]) {
    Object.assign(out, optional(o, k, where, (n, w) => whole(n, w)));
  }
  Object.assign(out, optional(o, "scope", where, (n, w) => whole(n, w, 255)));
  return out as unknown as CniRoute;
}

function strings(v: unknown, where: string, check?: (s: string, w: string) => void): string[] {
  return list(v, where).map((s, i) => {
    const text = string(s, `${where}[${i}]`);
    check?.(text, `${where}[${i}]`);
    return text;
  });
}

function parseDns(v: unknown, where: string): CniDns {
  const o = object(v, where);
  const address = (s: string, w: string) => {
    if (addressFamily(s) === undefined) fail(w, `${JSON.stringify(s)} is not an address`);
  };
  return {
    ...optional(o, "nameservers", where, (n, w) => strings(n, w, address)),
    ...optional(o, "domain", where, string),
    ...optional(o, "search", where, (n, w) => strings(n, w)),
    ...optional(o, "options", where, (n, w) => strings(n, w)),
  };
}

/**
 * A result of any supported version in 1.1.0 shape; a {@linkcode TypeError}
 * naming the first invalid field (e.g. `ips[0].address "999.1.1.1/32" is not …`) otherwise.
 */
export function parseResult(value: unknown): CniResult {
  const r = object(value, "");
  if (present(r.cniVersion)) string(r.cniVersion, "cniVersion");
  const interfaces = !present(r.interfaces)
    ? undefined
    : list(r.interfaces, "interfaces").map((v, i) => parseInterface(v, `interfaces[${i}]`));
  const count = interfaces?.length ?? 0;
  const ips = !present(r.ips)
    ? undefined
    : list(r.ips, "ips").map((v, i) => parseIp(v, `ips[${i}]`, count));
  const routes = !present(r.routes)
    ? undefined
    : list(r.routes, "routes").map((v, i) => parseRoute(v, `routes[${i}]`));
  const dns = !present(r.dns) ? undefined : parseDns(r.dns, "dns");
  return {
    cniVersion: "1.1.0",
    ...(interfaces ? { interfaces } : {}),
    ...(ips ? { ips } : {}),
    ...(routes ? { routes } : {}),
    ...(dns ? { dns } : {}),
  };
}
