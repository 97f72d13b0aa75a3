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
        scalar({
          name: "wgcni_node_peer_operations_total",
          help: "Peer changes applied to the node interface (one wg set each).",
          type: "counter",
        }, p.mesh.applied),
        scalar({
          name: "wgcni_node_peer_resyncs_total",
          help: "Full diffs of the node interface against the cluster's view.",
          type: "counter",
        }, p.mesh.resyncs),
        scalar({
          name: "wgcni_node_cluster_revision",
          help: "Revision of the last cluster change applied.",
        }, p.mesh.revision),
        scalar({
          name: "wgcni_node_cluster_connected",
          help: "1 while the node follows a cluster manager's watch stream.",
        }, p.watch.connected ? 1 : 0),
        scalar({
          name: "wgcni_node_direct_peers",
          help: "Direct pod-to-pod peers of this node's pods.",
        }, p.direct?.peers ?? 0),
        scalar({
          name: "wgcni_node_direct_promotions_total",
          help: "Pod pairs made direct by this node.",
          type: "counter",
        }, p.direct?.promotions ?? 0),
        scalar({
          name: "wgcni_node_direct_removals_total",
          help: "Direct peers removed from this node's pods (idle, gone, or at a DEL).",
          type: "counter",
        }, p.direct?.removals ?? 0),
        scalar({
          name: "wgcni_node_direct_failures_total",
          help: "Pod pairs that could not be made direct and stayed on the hub.",
          type: "counter",
        }, p.direct?.failures ?? 0),
        scalar({
          name: "wgcni_node_watch_reconnects_total",
          help: "Watch streams that broke after they were open.",
          type: "counter",
        }, p.watch.reconnects),
      ]),
      ...this.#duration.lines(),
      ...this.#failures.lines(),
    ].join("\n") + "\n";
  }
}
