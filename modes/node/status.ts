/** `wgcni status`: what the node manager reports over its local API. */
import { createLocalClient } from "../../lib/api/local_client.ts";

export interface StatusView {
  readonly node: Record<string, unknown>;
  readonly peers: readonly Record<string, unknown>[];
  readonly allocations: Record<string, unknown>;
}

export async function nodeStatus(socket: string): Promise<StatusView> {
  const c = createLocalClient(socket);
  try {
    const [node, peers, allocations] = await Promise.all([c.node(), c.peers(), c.allocations()]);
    return { node, peers: (peers.peers ?? []) as Record<string, unknown>[], allocations };
  } finally {
    c.close();
  }
}

function ago(seconds: number): string {
  if (!seconds) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  return s < 120
    ? `${s}s ago`
    : s < 7200
    ? `${Math.round(s / 60)}m ago`
    : `${Math.round(s / 3600)}h ago`;
}

/** The human-readable form. */
export function renderStatus(s: StatusView): string {
  const n = s.node as Record<string, unknown> & { subnets?: string[]; gateways?: string[] };
  const lines = [
    `node       ${n.name}  (${
      n.connected ? "following the cluster" : "cluster manager unreachable"
    }, revision ${n.revision})`,
    `interface  ${n.interface}  backend ${n.backend}  port ${n.listenPort}  mtu ${n.mtu}`,
    `endpoint   ${n.endpoint}`,
    `public key ${n.publicKey}`,
    `subnets    ${(n.subnets ?? []).join("  ")}`,
    "",
    `peers (${s.peers.length}):`,
  ];
  for (const p of s.peers) {
    lines.push(
      `  ${String(p.name).padEnd(28)} ${String(p.endpoint ?? "(dials in)").padEnd(22)} ${
        (p.allowedIps as string[]).join(",")
      }  handshake ${ago(Number(p.latestHandshake))}  rx ${p.rxBytes} tx ${p.txBytes}`,
    );
  }
  const pods = (s.allocations.pods ?? []) as {
    containerId: string;
    ifname: string;
    addresses: string[];
    phase: string;
  }[];
  lines.push("", `allocations (${pods.length}, ${s.allocations.free} free):`);
  for (const p of pods) {
    lines.push(
      `  ${`${p.containerId}/${p.ifname}`.padEnd(40)} ${p.addresses.join("  ")}${
        p.phase === "ready" ? "" : `  (${p.phase})`
      }`,
    );
  }
  return lines.join("\n");
}
