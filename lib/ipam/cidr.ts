/**
 * Dual-stack address arithmetic on bigints: an address is its family and
 * its value; a CIDR is its family, base address and prefix length.
 */
import ipaddr from "ipaddr.js";
import type { Family } from "../domain/cluster.ts";
import { addressFamily } from "../domain/address.ts";

export type { Family };

/** An address as a number. */
export interface Address {
  readonly family: Family;
  readonly value: bigint;
}

/** A network: base address (host bits zero) and prefix length. */
export interface Cidr {
  readonly family: Family;
  readonly base: bigint;
  readonly prefix: number;
}

/** Bits in an address of the family. */
export function bitsOf(family: Family): 32 | 128 {
  return family === 4 ? 32 : 128;
}

/** Parses an IPv4 (dotted quad) or IPv6 address. */
export function parseAddress(text: string): Address {
  const family = addressFamily(text);
  if (family === 4 && ipaddr.IPv4.isValidFourPartDecimal(text)) {
    const b = ipaddr.IPv4.parse(text).toByteArray();
    return { family: 4, value: bytesToBigint(b) };
  }
  if (family === 6 && ipaddr.IPv6.isValid(text)) {
    const b = ipaddr.IPv6.parse(text).toByteArray();
    return { family: 6, value: bytesToBigint(b) };
  }
  throw new TypeError(`Cannot parse address "${text}": expected IPv4 or IPv6`);
}

/** The canonical text of an address (IPv6 compressed, lowercase, RFC 5952). */
export function formatAddress(family: Family, value: bigint): string {
  const n = bitsOf(family) / 8;
  const bytes: number[] = new Array(n);
  let v = value;
  for (let i = n - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  if (v !== 0n || value < 0n) {
    throw new RangeError(`Cannot format ${value} as an IPv${family} address`);
  }
  return family === 4
    ? bytes.join(".")
    : (ipaddr.fromByteArray(bytes) as ipaddr.IPv6).toRFC5952String();
}

function bytesToBigint(bytes: readonly number[]): bigint {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

/** Parses `address/prefix`; the host bits must be zero. */
export function parseCidr(text: string): Cidr {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text);
  if (!m) throw new TypeError(`Cannot parse CIDR "${text}": expected ADDRESS/PREFIX`);
  let addr: Address;
  try {
    addr = parseAddress(m[1] as string);
  } catch {
    throw new TypeError(`Cannot parse CIDR "${text}": "${m[1]}" is not an address`);
  }
  const prefix = Number(m[2]);
  const bits = bitsOf(addr.family);
  if (prefix > bits) {
    throw new RangeError(`Cannot parse CIDR "${text}": prefix length ${prefix} exceeds ${bits}`);
  }
  const hostMask = (1n << BigInt(bits - prefix)) - 1n;
  if ((addr.value & hostMask) !== 0n) {
    throw new RangeError(`Cannot parse CIDR "${text}": host bits are set`);
  }
  return { family: addr.family, base: addr.value, prefix };
}

/** `base/prefix` in canonical form. */
export function formatCidr(c: Cidr): string {
  return `${formatAddress(c.family, c.base)}/${c.prefix}`;
}

/** Number of addresses in the network. */
export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(bitsOf(c.family) - c.prefix);
}

/** The last address of the network. */
export function lastAddress(c: Cidr): bigint {
  return c.base + cidrSize(c) - 1n;
}

function isCidr(x: Cidr | Address): x is Cidr {
  return "prefix" in x;
}

/** True when `inner` (a network or an address) lies wholly inside `outer`. */
export function contains(outer: Cidr, inner: Cidr | Address): boolean {
  if (outer.family !== inner.family) return false;
  const lo = isCidr(inner) ? inner.base : inner.value;
  const hi = isCidr(inner) ? lastAddress(inner) : inner.value;
  return lo >= outer.base && hi <= lastAddress(outer);
}

/** True when the two networks share any address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.base <= lastAddress(b) && b.base <= lastAddress(a);
}

/** The i-th address of the network (0 = the base). */
export function nthAddress(c: Cidr, i: bigint): bigint {
  if (i < 0n || i >= cidrSize(c)) {
    throw new RangeError(`Cannot take address ${i} of ${formatCidr(c)}: out of range`);
  }
  return c.base + i;
}

/** The first host address (base + 1; the base itself for /31, /32, /127, /128). */
export function firstHost(c: Cidr): bigint {
  return cidrSize(c) > 2n ? c.base + 1n : c.base;
}

/** An address as a one-address network: `a/32` or `a/128`. */
export function hostCidr(family: Family, value: bigint): string {
  return `${formatAddress(family, value)}/${bitsOf(family)}`;
}
