/** `wgcni status`: what the node manager reports over its local API, for people and for scripts. */
import { createLocalClient } from "../../lib/api/local_client.ts";
import { table } from "../../lib/table.ts";

export interface StatusView {
  readonly node: Record<string, unknown>;
  readonly peers: readonly Record<string, unknown>[];
  readonly allocations: Record<string, unknown>;
}

/**
 * A peer whose last handshake is older than this has no live session:
 * WireGuard rekeys every 2 minutes and drops a session after 3.
 */
export const STALE_AFTER_S = 180;

/** The node manager's views; an Error naming the socket and what to do when it cannot be reached. */
export async function nodeStatus(socket: string): Promise<StatusView> {
  try {
    await Deno.stat(socket);
  } catch {
    throw new Error(
      `Cannot reach the node manager: no socket at ${socket} (is \`wgcni node join\` running on this node? give --socket if it listens elsewhere)`,
    );
  }
  const c = createLocalClient(socket);
  try {
    const [node, peers, allocations] = await Promise.all([c.node(), c.peers(), c.allocations()]);
    return { node, peers: (peers.peers ?? []) as Record<string, unknown>[], allocations };
  } catch (err) {
    throw new Error(
      `${(err as Error).message} (is \`wgcni node join\` running? as root, the socket is 0600)`,
    );
  } finally {
    c.close();
  }
}

/** How long ago, in words; "never" for 0. */
export function ago(seconds: number, now = Date.now() / 1000): string {
  if (!seconds) return "never";
  const s = Math.max(0, Math.round(now - seconds));
  return s < 120
    ? `${s}s ago`
    : s < 7200
    ? `${Math.round(s / 60)}m ago`
    : s < 172_800
    ? `${Math.round(s / 3600)}h ago`
    : `${Math.round(s / 86_400)}d ago`;
}

/** Bytes with a unit (B, KiB, MiB, GiB, TiB). */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

/**
 * A peer's liveness: "stale" when it had a session and lost it (no
 * handshake for longer than {@linkcode STALE_AFTER_S}), "never" when it
 * never had one, else "ok".
 */
export function liveness(latestHandshake: number, now = Date.now() / 1000): string {
  if (!latestHandshake) return "never";
  return now - latestHandshake > STALE_AFTER_S ? "stale" : "ok";
}

/** The status as scripts read it: each peer with its liveness, numbers as numbers. */
export function statusJson(s: StatusView, now = Date.now() / 1000): unknown {
  return {
    node: s.node,
    peers: s.peers.map((p) => ({ ...p, state: liveness(Number(p.latestHandshake), now) })),
    allocations: { ...s.allocations, free: Number(s.allocations.free) },
  };
}

/** A rotation under way, as the public key line ends: `  (rotating to KEY at TIME)`. */
function rotating(r: unknown): string {
  const x = r as { to?: string; switchAt?: number } | undefined;
  if (typeof x?.to !== "string" || typeof x.switchAt !== "number") return "";
  return `  (rotating to ${x.to} at ${new Date(x.switchAt).toISOString()})`;
}

/** The human-readable form. */
export function renderStatus(s: StatusView, now = Date.now() / 1000): string {
  const n = s.node as Record<string, unknown> & { subnets?: string[] };
  const backend = n.backend === "kernel"
    ? "kernel WireGuard"
    : n.backend === "userspace"
    ? "wireguard-go"
    : String(n.backend);
  const lines = [
    `node       ${n.name}  (${
      n.connected ? "following the cluster" : "cluster manager unreachable"
    }, revision ${n.revision})`,
    `interface  ${n.interface}  backend ${backend}  port ${n.listenPort}  mtu ${n.mtu}`,
    `endpoint   ${n.endpoint}${n.nat ? `  (behind NAT, seen at ${n.seenAt})` : ""}`,
    `public key ${n.publicKey}${rotating(n.rotating)}`,
    `subnets    ${(n.subnets ?? []).join("  ")}`,
    "",
    `peers (${s.peers.length}):`,
  ];
  const rows = s.peers.map((p) => {
    const hs = Number(p.latestHandshake);
    const state = liveness(hs, now);
    return [
      String(p.name),
      `${p.endpoint ?? "(dials in)"}${p.nat ? " (behind NAT)" : ""}${
        p.path === "relayed" ? " relayed" : ""
      }${p.mtu !== undefined ? ` mtu ${p.mtu}` : ""}`,
      (p.allowedIps as string[]).join(","),
      `${ago(hs, now)}${state === "stale" ? " (stale)" : ""}`,
      bytes(Number(p.rxBytes)),
      bytes(Number(p.txBytes)),
    ];
  });
  if (rows.length) {
    lines.push(
      ...indent(table(["NAME", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RECEIVED", "SENT"], rows)),
    );
  }
  const pods = (s.allocations.pods ?? []) as {
    containerId: string;
    ifname: string;
    addresses: string[];
    phase: string;
    podName?: string;
    nodeInterface?: string;
    direct?: { addresses: string[]; node: string; endpoint: string; latestHandshake: number }[];
  }[];
  lines.push("", `pods (${pods.length}, ${s.allocations.free} addresses free):`);
  if (pods.length) {
    lines.push(...indent(table(
      ["POD", "CONTAINER", "IFNAME", "ON THE NODE", "ADDRESSES", "STATE"],
      pods.map((p) => [
        p.podName ?? "-",
        p.containerId.length > 16 ? `${p.containerId.slice(0, 12)}…` : p.containerId,
        p.ifname,
        p.nodeInterface ?? "-",
        p.addresses.join(" "),
        p.phase,
      ]),
    )));
  }
  const direct = pods.flatMap((p) =>
    (p.direct ?? []).map((d) => [
      p.addresses[0] ?? "-",
      d.addresses.join(" "),
      d.node,
      d.endpoint,
      ago(Number(d.latestHandshake), now),
    ])
  );
  const mode = (s.node as { podPaths?: string }).podPaths;
  lines.push(
    "",
    `direct pod paths (${mode === "hub" ? "off: --pod-paths hub" : `${direct.length}`}):`,
  );
  if (direct.length) {
    lines.push(...indent(table(["POD", "PEER", "NODE", "ENDPOINT", "HANDSHAKE"], direct)));
  }
  const workloads = (s.allocations.workloads ?? []) as {
    name: string;
    phase: string;
    addresses: string[];
    publicKey?: string;
    endpointPort?: number;
  }[];
  lines.push("", `workloads with their own interface (${workloads.length}):`);
  if (workloads.length) {
    lines.push(...indent(table(
      ["NAME", "ADDRESSES", "PUBLIC KEY", "ENDPOINT", "STATE"],
      workloads.map((w) => [
        w.name,
        w.addresses.map((a) => a.replace(/\/\d+$/, "")).join(" "),
        w.publicKey ?? "-",
        w.endpointPort !== undefined ? `127.0.0.1:${w.endpointPort}` : "(dials in)",
        w.phase,
      ]),
    )));
  }
  return lines.join("\n");
}

function indent(text: string): string[] {
  return text.split("\n").map((l) => `  ${l}`.trimEnd());
}
