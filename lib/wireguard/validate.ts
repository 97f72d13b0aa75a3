/** Checks of values that end up on a `wg` command line or in a wg-quick file. */
import { addressFamily, cidrFamily, splitEndpoint } from "../domain/address.ts";

/** True for an IPv4 or IPv6 address. */
export function isIp(s: string): boolean {
  return addressFamily(s) !== undefined;
}

/** Validates `a.b.c.d/n` or `x::y/n`; returns it. */
export function checkCidr(s: string, what = "allowed IP"): string {
  if (cidrFamily(s) === undefined) {
    throw new TypeError(`Cannot use ${what} "${s}": expected an address with a prefix length`);
  }
  return s;
}

/** Validates `IP:PORT` or `[IPv6]:PORT`; returns it. */
export function checkEndpoint(s: string): string {
  if (splitEndpoint(s) === undefined) {
    throw new TypeError(`Cannot use endpoint "${s}": expected IP:PORT or [IPv6]:PORT`);
  }
  return s;
}
