/**
 * The node manager's metrics (`node join --metrics-listen ADDR:PORT`), in the
 * Prometheus text format: each peer's last handshake and traffic, CNI
 * operations by command (duration, failures by CNI code), pod addresses used
 * and free per subnet, the mesh's peer operations and resyncs, and the
 * cluster watch's state and reconnects.
 */
import { CniError, ERR } from "../../lib/cni/errors.ts";
import type { DirectCounts } from "./direct.ts";
import { buildInfo, Counter, Histogram, renderFamilies, scalar } from "../../lib/metrics.ts";
import type { PeerState } from "../../lib/wireguard/mod.ts";
import { VERSION } from "../../lib/version.ts";
import type { PodAddresses } from "./pods.ts";
import type { Mesh } from "./mesh.ts";
import type { ClusterWatch } from "./peer_source.ts";

/** What the node reads at scrape time. */
export interface NodeMetricParts {
  /** The node interface's peers, each with the name the node knows it by (`node/…`, `pod/…`). */
  readonly peers: () => Promise<readonly (PeerState & { readonly name: string })[]>;
  readonly addresses: PodAddresses;
  readonly mesh: Mesh;
  readonly watch: ClusterWatch;
  readonly direct?: DirectCounts;
}

/** The node's one-number families and their help; names ending in `_total` are counters. */
const SCALAR_HELP = {
  wgcni_node_peer_operations_total: "Peer changes applied to the node interface (one wg set each).",
  wgcni_node_peer_resyncs_total: "Full diffs of the node interface against the cluster's view.",
  wgcni_node_cluster_revision: "Revision of the last cluster change applied.",
  wgcni_node_cluster_connected: "1 while the node follows a cluster manager's watch stream.",
  wgcni_node_direct_peers: "Direct pod-to-pod peers of this node's pods.",
  wgcni_node_direct_promotions_total: "Pod pairs made direct by this node.",
  wgcni_node_direct_removals_total: "Direct peers removed from pods (idle, gone, or at a DEL).",
  wgcni_node_direct_failures_total:
    "Pod pairs that could not be made direct and stayed on the hub.",
  wgcni_node_watch_reconnects_total: "Watch streams that broke after they were open.",
} as const;

/** Where each of {@linkcode SCALAR_HELP}'s numbers is read. */
function scalarValues(p: NodeMetricParts): Record<keyof typeof SCALAR_HELP, number> {
  const d = p.direct;
  return {
    wgcni_node_peer_operations_total: p.mesh.applied,
    wgcni_node_peer_resyncs_total: p.mesh.resyncs,
    wgcni_node_cluster_revision: p.mesh.revision,
    wgcni_node_cluster_connected: p.watch.connected ? 1 : 0,
    wgcni_node_direct_peers: d?.peers ?? 0,
    wgcni_node_direct_promotions_total: d?.promotions ?? 0,
    wgcni_node_direct_removals_total: d?.removals ?? 0,
    wgcni_node_direct_failures_total: d?.failures ?? 0,
    wgcni_node_watch_reconnects_total: p.watch.reconnects,
  };
}

export class NodeMetrics {
  readonly #duration = new Histogram(
    "wgcni_node_cni_duration_seconds",
    "Time the node manager took for a CNI request, by command.",
  );
  readonly #failures = new Counter(
    "wgcni_node_cni_failures_total",
    "CNI requests that failed, by command and CNI error code.",
  );

  /** Runs one CNI request, timing it and counting its failure by code. */
  async timed<T>(command: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } catch (err) {
      const code = err instanceof CniError ? err.code : ERR.internal;
      this.#failures.inc({ command, code });
      throw err;
    } finally {
      this.#duration.observe({ command }, (performance.now() - t0) / 1000);
    }
  }

  /** The whole text, read now. */
  async render(p: NodeMetricParts): Promise<string> {
    const peers = await p.peers();
    const byPeer = (value: (x: PeerState) => number) =>
      peers.map((x) => ({ labels: { peer: x.name, key: x.publicKey }, value: value(x) }));
    const usage = p.addresses.usage();
    const bySubnet = (value: (u: (typeof usage)[number]) => number) =>
      usage.map((u) => ({
        labels: { subnet: u.subnet, family: `ipv${u.family}` },
        value: value(u),
      }));
    return [
      ...renderFamilies([
        buildInfo(VERSION),
        {
          name: "wgcni_node_peers",
          help: "Peers of the node interface, by kind (node, client, pod).",
          samples: ["node", "client", "pod", "unknown"].map((kind) => ({
            labels: { kind },
            value: peers.filter((x) => x.name.split("/")[0] === kind).length,
          })),
        },
        {
          name: "wgcni_node_peer_last_handshake_seconds",
          help:
            "When the last handshake with a peer completed (seconds since the epoch; 0: never).",
          samples: byPeer((x) => x.latestHandshake),
        },
        {
          name: "wgcni_node_peer_received_bytes_total",
          help: "Bytes received from a peer.",
          type: "counter",
          samples: byPeer((x) => x.rxBytes),
        },
        {
          name: "wgcni_node_peer_sent_bytes_total",
          help: "Bytes sent to a peer.",
          type: "counter",
          samples: byPeer((x) => x.txBytes),
        },
        {
          name: "wgcni_node_addresses_used",
          help: "Pod addresses held in a node subnet.",
          samples: bySubnet((u) => u.used),
        },
        {
          name: "wgcni_node_addresses_free",
          help: "Pod addresses left in a node subnet.",
          samples: bySubnet((u) => Number(u.free)),
        },
        ...Object.entries(scalarValues(p)).map(([name, value]) =>
          scalar({
            name,
            help: SCALAR_HELP[name as keyof typeof SCALAR_HELP],
            ...(name.endsWith("_total") ? { type: "counter" as const } : {}),
          }, value)
        ),
      ]),
      ...this.#duration.lines(),
      ...this.#failures.lines(),
    ].join("\n") + "\n";
  }
}
