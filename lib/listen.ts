/** Listen addresses as flags give them. */
import ipaddr from "ipaddr.js";

/** Splits `ADDR:PORT` / `[IPv6]:PORT`; throws RangeError. */
export function parseListen(text: string): { hostname: string; port: number; loopback: boolean } {
  const m = text.match(/^\[([^\]]+)\]:(\d{1,5})$/) ?? text.match(/^([^:\[\]]+):(\d{1,5})$/);
  if (m === null) {
    throw new RangeError(`Cannot listen on "${text}": expected ADDR:PORT or [IPv6]:PORT`);
  }
  const hostname = m[1]!;
  const port = Number(m[2]);
  if (port > 65535) throw new RangeError(`Cannot listen on "${text}": port ${port} is over 65535`);
  if (hostname === "localhost") return { hostname: "127.0.0.1", port, loopback: true };
  if (!ipaddr.isValid(hostname)) {
    throw new RangeError(`Cannot listen on "${text}": ${hostname} is not an IP address`);
  }
  return { hostname, port, loopback: ipaddr.parse(hostname).range() === "loopback" };
}
