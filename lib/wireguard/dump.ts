/** Parsing `wg show NAME dump` (tab-separated; the first line is the interface). */
import type { InterfaceState, PeerState } from "./types.ts";

function num(field: string | undefined, what: string, line: number): number {
  if (field === undefined || !/^\d+$/.test(field)) {
    throw new SyntaxError(`Cannot parse wg dump line ${line}: ${what} is not a number`);
  }
  return Number(field);
}

/**
 * Parses the dump of one interface. The interface's private key (first
 * field of line 1) is dropped and never returned; so are preshared keys.
 */
export function parseDump(text: string): InterfaceState {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  const first = lines[0];
  if (first === undefined) throw new SyntaxError("Cannot parse wg dump: it is empty");
  const f = first.split("\t");
  if (f.length !== 4) {
    throw new SyntaxError(`Cannot parse wg dump line 1: expected 4 fields, got ${f.length}`);
  }
  const peers: PeerState[] = lines.slice(1).map((l, i) => {
    const p = l.split("\t");
    if (p.length !== 8) {
      throw new SyntaxError(
        `Cannot parse wg dump line ${i + 2}: expected 8 fields, got ${p.length}`,
      );
    }
    const [publicKey, psk, endpoint, allowed, hs, rx, tx, keepalive] = p as [
      string,
      string,
      string,
      string,
      string,
      string,
      string,
      string,
    ];
    return {
      publicKey,
      hasPresharedKey: psk !== "(none)",
      endpoint: endpoint === "(none)" ? null : endpoint,
      allowedIps: allowed === "(none)" ? [] : allowed.split(","),
      latestHandshake: num(hs, "latest handshake", i + 2),
      rxBytes: num(rx, "rx bytes", i + 2),
      txBytes: num(tx, "tx bytes", i + 2),
      persistentKeepalive: keepalive === "off" ? null : num(keepalive, "keepalive", i + 2),
    };
  });
  return {
    publicKey: f[1] as string,
    listenPort: num(f[2], "listen port", 1),
    fwmark: f[3] === "off" ? null : num(f[3], "fwmark", 1),
    peers,
  };
}
