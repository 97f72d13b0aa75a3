/**
 * PROVISIONAL stand-ins for lib/wireguard (keys and wg-quick rendering),
 * which is being written in parallel; client_config.ts switches to it once it
 * lands and this file goes away.
 */

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

/** A fresh X25519 key pair in WireGuard's base64 form. */
export async function generateKeyPair(): Promise<{ privateKey: string; publicKey: string }> {
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const priv = pkcs8.slice(pkcs8.length - 32);
  // Clamp as WireGuard does, so `wg pubkey` gives the same public key.
  priv[0]! &= 248;
  priv[31]! &= 127;
  priv[31]! |= 64;
  return { privateKey: base64(priv), publicKey: base64(pub) };
}

/** A wg-quick configuration. */
export interface WgQuickConfig {
  readonly interface: { readonly privateKey: string; readonly addresses: readonly string[] };
  readonly peers: readonly {
    readonly comment?: string;
    readonly publicKey: string;
    readonly endpoint?: string;
    readonly allowedIps: readonly string[];
    readonly persistentKeepalive?: number;
  }[];
}

/** Renders a wg-quick configuration file. */
export function renderWgQuick(config: WgQuickConfig): string {
  const lines = [
    "[Interface]",
    `PrivateKey = ${config.interface.privateKey}`,
    `Address = ${config.interface.addresses.join(", ")}`,
  ];
  for (const p of config.peers) {
    lines.push("", "[Peer]");
    if (p.comment !== undefined) lines.push(`# ${p.comment.replace(/[\r\n]/g, " ")}`);
    lines.push(`PublicKey = ${p.publicKey}`);
    if (p.endpoint !== undefined) lines.push(`Endpoint = ${p.endpoint}`);
    lines.push(`AllowedIPs = ${p.allowedIps.join(", ")}`);
    if (p.persistentKeepalive !== undefined) {
      lines.push(`PersistentKeepalive = ${p.persistentKeepalive}`);
    }
  }
  return lines.join("\n") + "\n";
}
