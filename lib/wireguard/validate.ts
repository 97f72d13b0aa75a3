/** Checks of values that end up on a `wg` command line or in a wg-quick file. */

const V4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function isV6(s: string): boolean {
  if (!/^[0-9a-fA-F:.]+$/.test(s) || !s.includes(":")) return false;
  try {
    new URL(`http://[${s}]/`);
    return true;
  } catch {
    return false;
  }
}

/** True for an IPv4 or IPv6 address. */
export function isIp(s: string): boolean {
  return V4.test(s) || isV6(s);
}

/** Validates `a.b.c.d/n` or `x::y/n`; returns it. */
export function checkCidr(s: string, what = "allowed IP"): string {
  const m = s.match(/^(.+)\/(\d{1,3})$/);
  const addr = m?.[1];
  const bits = Number(m?.[2]);
  if (addr === undefined || !isIp(addr) || bits > (addr.includes(":") ? 128 : 32)) {
    throw new TypeError(`Cannot use ${what} "${s}": expected an address with a prefix length`);
  }
  return s;
}

/** Validates `IP:PORT` or `[IPv6]:PORT`; returns it. */
export function checkEndpoint(s: string): string {
  const m = s.match(/^\[([^\]]+)\]:(\d+)$/) ?? s.match(/^([^:]+):(\d+)$/);
  const host = m?.[1];
  const port = Number(m?.[2]);
  const ok = host !== undefined && (s.startsWith("[") ? isV6(host) : V4.test(host)) &&
    port >= 1 && port <= 65535;
  if (!ok) throw new TypeError(`Cannot use endpoint "${s}": expected IP:PORT or [IPv6]:PORT`);
  return s;
}
