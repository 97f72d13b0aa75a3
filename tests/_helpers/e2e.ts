/** Shared bits of end-to-end tests: the opt-in switch and unique names. */

/** True when the end-to-end suite was asked for (tests/run.ts sets it when root and tools are present). */
export const E2E = Deno.env.get("WGCNI_E2E") === "1";

let counter = 0;

/** A short unique name for namespaces and interfaces: prefix + pid + counter (≤ 15 bytes for links). */
export function uniqueName(prefix: string): string {
  counter++;
  const pid = (Deno.pid % 100000).toString(36);
  const rand = Math.floor(Math.random() * 36 ** 2).toString(36);
  return `${prefix}${pid}${counter.toString(36)}${rand}`.slice(0, 15);
}

/** The pod reservations a node manager reports on its local API. */
export async function allocations(
  node: { socket: string },
): Promise<{ containerId: string; ifname: string; addresses: string[] }[]> {
  const { createLocalClient } = await import("../../lib/api/local_client.ts");
  const c = createLocalClient(node.socket);
  try {
    return (await c.allocations()).pods as {
      containerId: string;
      ifname: string;
      addresses: string[];
    }[];
  } finally {
    c.close();
  }
}

/** Waits until `fn` is true, or fails naming `what`. */
export async function eventually(
  what: string,
  fn: () => Promise<boolean>,
  ms = 15000,
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Timed out waiting for ${what}`);
}
