/** Rendering a wg-quick configuration file. */
import { parseKey } from "./keys.ts";
import type { InterfaceConfig } from "./types.ts";
import { checkCidr, checkEndpoint, isIp } from "./validate.ts";

/** Renders `config` as a wg-quick file (write it with mode 0600: it holds a private key). */
export function renderWgQuick(config: InterfaceConfig): string {
  const out = ["[Interface]", `PrivateKey = ${parseKey(config.privateKey, "private key")}`];
  if (config.addresses.length === 0) {
    throw new TypeError("Cannot render wg-quick config: no address");
  }
  out.push(`Address = ${config.addresses.map((a) => checkCidr(a, "address")).join(", ")}`);
  if (config.listenPort !== undefined) out.push(`ListenPort = ${port(config.listenPort)}`);
  if (config.mtu !== undefined) {
    if (!Number.isInteger(config.mtu) || config.mtu < 1280 || config.mtu > 65535) {
      throw new RangeError(`Cannot use MTU ${config.mtu}: expected 1280 to 65535`);
    }
    out.push(`MTU = ${config.mtu}`);
  }
  if (config.dns?.length) {
    for (const d of config.dns) {
      if (!isIp(d)) throw new TypeError(`Cannot use DNS server "${d}": expected an IP address`);
    }
    out.push(`DNS = ${config.dns.join(", ")}`);
  }
  for (const p of config.peers) {
    out.push("", "[Peer]", `PublicKey = ${parseKey(p.publicKey, "peer public key")}`);
    if (p.endpoint !== undefined) out.push(`Endpoint = ${checkEndpoint(p.endpoint)}`);
    out.push(`AllowedIPs = ${p.allowedIps.map((a) => checkCidr(a)).join(", ")}`);
    if (p.persistentKeepalive) out.push(`PersistentKeepalive = ${p.persistentKeepalive}`);
  }
  return out.join("\n") + "\n";
}

function port(n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new RangeError(`Cannot use port ${n}: expected 1 to 65535`);
  }
  return n;
}

/** The private key of a wg-quick configuration's [Interface]; TypeError when there is none. */
export function privateKeyOf(text: string): string {
  let inInterface = false;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (/^\[.*\]$/.test(line)) inInterface = line.toLowerCase() === "[interface]";
    const m = inInterface ? line.match(/^PrivateKey\s*=\s*(\S+)$/i) : null;
    if (m) return parseKey(m[1], "the private key of the configuration");
  }
  throw new TypeError("Cannot read the configuration: no PrivateKey in its [Interface]");
}
