/**
 * Address ranges that can never be a cluster pool or a peer's endpoint: a
 * packet to them never reaches another machine (loopback, link-local, the
 * unspecified address, multicast, the IPv4 broadcast address, IPv4-mapped
 * IPv6). One table, so pools and endpoints are judged by the same rule.
 */
import { type Address, type Cidr, contains, overlaps, parseCidr } from "./cidr.ts";

/** A range no pool may overlap and no endpoint may sit in, with what it is called. */
export interface SpecialRange {
  readonly cidr: Cidr;
  readonly text: string;
  readonly what: string;
}

export const SPECIAL_RANGES: readonly SpecialRange[] = [
  ["0.0.0.0/8", 'the unspecified ("this network") range'],
  ["127.0.0.0/8", "the loopback range"],
  ["169.254.0.0/16", "the link-local range"],
  ["224.0.0.0/4", "the multicast range"],
  ["255.255.255.255/32", "the broadcast address"],
  ["::/128", "the unspecified address"],
  ["::1/128", "the loopback address"],
  ["::ffff:0:0/96", "the IPv4-mapped range"],
  ["fe80::/10", "the link-local range"],
  ["ff00::/8", "the multicast range"],
].map(([text, what]) => ({ cidr: parseCidr(text!), text: text!, what: what! }));

/** The special range a network overlaps or an address sits in, if any. */
export function specialRangeOf(x: Cidr | Address): SpecialRange | undefined {
  return SPECIAL_RANGES.find((r) =>
    r.cidr.family === x.family && ("prefix" in x ? overlaps(r.cidr, x) : contains(r.cidr, x))
  );
}
