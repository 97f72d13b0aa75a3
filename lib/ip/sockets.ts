/**
 * The UDP ports bound in this process's network namespace, from
 * /proc/self/net/udp and udp6: a pod interface's socket stays bound in the
 * node's namespace while the interface lives (both WireGuard backends), so
 * a port that is not bound proves the interface gone.
 */

/** Parses the local ports of a /proc/net/udp{,6} table. */
export function parseUdpTable(text: string): number[] {
  const ports: number[] = [];
  for (const line of text.split("\n").slice(1)) {
    // "  sl  local_address rem_address ..." → "0100007F:D5A7"
    const local = line.trim().split(/\s+/)[1];
    const hex = local?.slice(local.lastIndexOf(":") + 1);
    if (hex && /^[0-9A-Fa-f]{4}$/.test(hex)) ports.push(parseInt(hex, 16));
  }
  return ports;
}

/**
 * Every UDP port bound in this namespace, over both families. Throws when
 * a table cannot be read: an empty answer would prove every socket gone.
 */
export async function boundUdpPorts(): Promise<Set<number>> {
  const ports = new Set<number>();
  for (const file of ["/proc/self/net/udp", "/proc/self/net/udp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (err) {
      // A kernel without IPv6 has no udp6 table; that one may be missing.
      if (file.endsWith("udp6") && err instanceof Deno.errors.NotFound) continue;
      throw new Error(`Cannot read the bound UDP ports from ${file}: ${(err as Error).message}`);
    }
    for (const p of parseUdpTable(text)) ports.add(p);
  }
  return ports;
}
