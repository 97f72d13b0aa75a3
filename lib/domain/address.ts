/**
 * The syntax of addresses, prefixes and endpoints, in one place: which
 * family a literal is, `address/prefix`, `IP:PORT` and `[IPv6]:PORT`.
 * Dependency-free (the CNI plugin's start path imports it); the arithmetic
 * on them is lib/ipam/cidr.ts, the policy (which ranges an endpoint may not
 * be in) lib/api/schemas.ts.
 */
import type { Family } from "./cluster.ts";

const OCTET = "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);

/** An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack socket reports) as IPv4; others as they are. */
export function unmappedAddress(text: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(text);
  return m ? m[1]! : text;
}

/** The family of an address literal (dotted quad or IPv6, no prefix, no zone), or undefined. */
export function addressFamily(text: string): Family | undefined {
  if (IPV4.test(text)) return 4;
  if (!text.includes(":") || !/^[0-9A-Fa-f:.]+$/.test(text)) return undefined;
  try {
    // The URL parser knows every IPv6 form (compressed, IPv4-suffixed).
    new URL(`http://[${text}]/`);
    return 6;
  } catch {
    return undefined;
  }
}

/** The family of `address/prefix` (a prefix within the family's bits), or undefined. */
export function cidrFamily(text: string): Family | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const family = addressFamily(text.slice(0, slash));
  const prefix = text.slice(slash + 1);
  if (family === undefined || !/^\d{1,3}$/.test(prefix)) return undefined;
  return Number(prefix) <= (family === 4 ? 32 : 128) ? family : undefined;
}

/** The family of an address known to be one (pod and node addresses wgcni made). */
export function familyOf(address: string): Family {
  return address.includes(":") ? 6 : 4;
}

/** The address as a one-host prefix: /32 or /128. */
export function hostPrefix(address: string): string {
  return `${address}/${familyOf(address) === 4 ? 32 : 128}`;
}

/** [IPv4, IPv6] of a list holding at most one of each family. */
export function byFamily(
  addresses: readonly string[],
): [string | undefined, string | undefined] {
  return [
    addresses.find((a) => familyOf(a) === 4),
    addresses.find((a) => familyOf(a) === 6),
  ];
}

/** An endpoint's parts: a numeric address (no brackets) and a port. */
export interface HostPort {
  readonly host: string;
  readonly family: Family;
  readonly port: number;
}

/**
 * Parses `IP:PORT` or `[IPv6]:PORT` (a numeric address, not a host name);
 * throws RangeError saying what is wrong.
 */
export function parseHostPort(text: string): HostPort {
  const m = text.match(/^\[([^\]]+)\]:(\d{1,5})$/) ?? text.match(/^([0-9.]+):(\d{1,5})$/);
  if (m === null) {
    throw new RangeError(
      `"${text}" is not IP:PORT or [IPv6]:PORT (a numeric address; host names are not accepted)`,
    );
  }
  const host = m[1]!;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new RangeError(`port ${m[2]} is not within 1 to 65535`);
  if (host.includes("%")) throw new RangeError(`"${host}": zone ids are not accepted`);
  const bracketed = text.startsWith("[");
  const family = addressFamily(host);
  if (family !== (bracketed ? 6 : 4)) {
    throw new RangeError(`"${host}" is not an IPv${bracketed ? 6 : 4} address`);
  }
  return { host, family, port };
}

/** {@linkcode parseHostPort}, or undefined when the text is not an endpoint. */
export function splitEndpoint(text: string): HostPort | undefined {
  try {
    return parseHostPort(text);
  } catch {
    return undefined;
  }
}

/** `IP:PORT`, or `[IPv6]:PORT`. */
export function joinHostPort(host: string, port: number): string {
  return familyOf(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
