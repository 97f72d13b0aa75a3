/**
 * What the node's local API does for each verb: CNI requests go to the pod
 * manager, the workload steps to the workload manager; STATUS, and the
 * read-only views `wgcni status` and tests use, are answered from the
 * interface, the mesh and the node's state.
 */
import { PoolExhaustedError } from "../../lib/errors.ts";
import type { LocalHandlers } from "../../lib/api/local_app.ts";
import type { CniErrorBody, CniRequest, CniResult } from "../../lib/api/local_types.ts";
import type { ClusterInfo } from "../../lib/api/cluster_types.ts";
import type { WireGuardControl } from "../../lib/wireguard/mod.ts";
import type { NodeStateStore } from "../../lib/store/node_state.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import type { PodAddresses, PodManager, PodRequest } from "./pods.ts";
import type { Mesh } from "./mesh.ts";
import type { PeerSource } from "./peer_source.ts";
import { gatewayOf } from "./netsetup.ts";
import type { NodeMetrics } from "./metrics.ts";
import type { WorkloadManager } from "./workloads.ts";
import type { DirectPaths, PodPaths } from "./direct.ts";
import { ownerOf } from "./pods.ts";
import type { KeyRotation } from "./rotation.ts";
import type { PathMtus } from "./path_mtu.ts";

/** The node's facts the views show. */
export interface NodeFacts {
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  /** Behind NAT (the manager saw the node from another address). */
  readonly nat?: boolean;
  /** The endpoint the cluster gave others at registration (the NAT's, when behind one). */
  readonly seenAt?: string;
  readonly iface: string;
  readonly backend: string | undefined;
  readonly listenPort: number;
  readonly mtu: number;
  readonly subnets: readonly string[];
  readonly cluster: ClusterInfo;
  readonly clusterUrls: readonly string[];
  readonly podPaths: PodPaths;
}

export interface LocalHandlerParts {
  /** Times CNI requests and counts their failures (see metrics.ts). */
  readonly metrics: NodeMetrics;
  readonly facts: NodeFacts;
  readonly pods: PodManager;
  readonly addresses: PodAddresses;
  readonly store: NodeStateStore;
  readonly wg: WireGuardControl;
  readonly mesh: Mesh;
  readonly peers: PeerSource;
  readonly workloads: WorkloadManager;
  readonly direct: DirectPaths;
  /** The MTU learnt toward each node peer (absent: not learnt). */
  readonly pathMtus?: PathMtus;
  /** The node's key and its rotations (absent: the key in `facts`, never rotated). */
  readonly rotation?: KeyRotation;
}

/** The handlers of the node's local API over its parts. */
export function localHandlers(p: LocalHandlerParts): LocalHandlers {
  const { facts, pods, addresses, store, wg, mesh, workloads } = p;
  return {
    workloads: {
      allocate: (name) => workloads.allocate(name),
      register: (name, key) => workloads.register(name, key),
      peers: (name) => workloads.peers(name),
      release: (name) => workloads.release(name),
      list: () => Promise.resolve(workloads.list()),
    },
    add: (req) => p.metrics.timed("ADD", () => pods.add(podRequest(req))),
    del: (req) => p.metrics.timed("DEL", () => pods.del(req)),
    check: (req) => p.metrics.timed("CHECK", () => pods.check(podRequest(req))),
    status: async () => {
      if (!(await wg.exists(facts.iface))) {
        return { code: ERR.statusCantAdd, msg: `The node interface ${facts.iface} is missing` };
      }
      if (addresses.free() <= 0n) {
        return {
          code: ERR.statusCantAdd,
          msg: `No free pod addresses left in ${facts.subnets.join(", ")}`,
        };
      }
      return undefined;
    },
    gc: async (valid) => valid === undefined ? { released: [], failed: [] } : await pods.gc(valid),
    node: () =>
      Promise.resolve({
        name: facts.name,
        publicKey: p.rotation?.key.publicKey ?? facts.publicKey,
        ...(p.rotation?.under ? { rotating: p.rotation.under } : {}),
        endpoint: facts.endpoint,
        ...(facts.nat ? { nat: true, seenAt: facts.seenAt } : {}),
        interface: facts.iface,
        backend: facts.backend,
        listenPort: facts.listenPort,
        mtu: facts.mtu,
        subnets: facts.subnets,
        gateways: facts.subnets.map(gatewayOf),
        cluster: facts.cluster,
        clusterUrls: facts.clusterUrls,
        connected: p.peers.connected,
        revision: mesh.revision,
        meshOperations: mesh.applied,
        podPaths: facts.podPaths,
        direct: { ...p.direct.counts },
      }),
    peers: async () => ({ peers: await namedPeers(p) }),
    ...(p.rotation
      ? {
        rotateKey: (leadMs?: number, options?: { pods?: boolean }) =>
          (p.rotation as KeyRotation).rotate(leadMs, options),
      }
      : {}),
    allocations: () => {
      const direct = p.direct.view();
      return Promise.resolve({
        subnets: facts.subnets,
        free: addresses.free().toString(),
        pods: store.all().map((r) => ({
          containerId: r.containerId,
          ifname: r.ifname,
          netns: r.netns,
          phase: r.phase,
          addresses: r.addresses,
          publicKey: r.publicKey,
          // Its WireGuard interface as the node namespace knows it (`wg show` by this name).
          nodeInterface: r.wgName,
          ...(r.podName !== undefined ? { podName: r.podName } : {}),
          direct: direct.get(ownerOf(r.containerId, r.ifname)) ?? [],
        })),
        recovered: pods.recovered(),
        workloads: workloads.list(),
        // Addresses of deleted pods kept until every node dropped them as a direct peer.
        held: p.direct.held(),
      });
    },
  };
}

/**
 * The node interface's peers, each with the name the node knows it by
 * (`node/…`, `client/…`, `pod/…`, `workload/…`).
 */
export async function namedPeers(
  p: Pick<LocalHandlerParts, "facts" | "pods" | "store" | "wg" | "mesh" | "pathMtus">,
) {
  const state = await p.wg.show(p.facts.iface);
  const names = new Map(p.mesh.peers.map((e) => [e.publicKey, `${e.kind}/${e.name}`]));
  const natted = new Set(p.mesh.peers.filter((e) => e.nat).map((e) => e.publicKey));
  const podNames = new Map([
    ...p.pods.recovered().map((r) => [r.publicKey, "pod/(recovered)"] as const),
    ...p.store.all().map((r) => [r.publicKey, `pod/${r.containerId}/${r.ifname}`] as const),
    ...p.store.workloads().flatMap((w) =>
      w.publicKey === undefined ? [] : [[w.publicKey, `workload/${w.name}`] as const]
    ),
  ]);
  return state.peers.map((peer) => ({
    ...peer,
    name: names.get(peer.publicKey) ?? podNames.get(peer.publicKey) ?? "unknown",
    ...(natted.has(peer.publicKey) ? { nat: true } : {}),
    // A node is reached directly, or through the manager's relay (see nat.ts).
    ...(names.get(peer.publicKey)?.startsWith("node/")
      ? { path: p.mesh.chosen(peer.publicKey) !== undefined ? "relayed" : "direct" }
      : {}),
    // The MTU toward that node, where its path is narrower than this node's link.
    ...((p.pathMtus?.learnt.get(peer.publicKey) ?? Infinity) < p.facts.mtu
      ? { mtu: p.pathMtus!.learnt.get(peer.publicKey) }
      : {}),
  }));
}

/** A CNI request as the pod manager takes it (prevResult already checked at the edge). */
export function podRequest(req: CniRequest): PodRequest {
  const prev = req.config.prevResult as CniResult | undefined;
  const ns = req.args.K8S_POD_NAMESPACE, name = req.args.K8S_POD_NAME;
  return {
    ...(name ? { podName: ns ? `${ns}/${name}` : name } : {}),
    containerId: req.containerId,
    ifname: req.ifname,
    netns: req.netns,
    cniVersion: typeof req.config.cniVersion === "string" ? req.config.cniVersion : "1.1.0",
    ...(prev ? { prevResult: prev } : {}),
  };
}

/** The local API's error table: CNI errors keep their code; a full pool is 101, anything else 100. */
export function mapError(err: unknown): { status: 400 | 409 | 500 | 503; body: CniErrorBody } {
  if (err instanceof CniError) {
    const body = err.details === undefined
      ? { code: err.code, msg: err.message }
      : { code: err.code, msg: err.message, details: err.details };
    return { status: err.code >= 2 && err.code <= 7 ? 400 : 500, body };
  }
  if (err instanceof PoolExhaustedError) {
    return { status: 503, body: { code: ERR.poolExhausted, msg: err.message } };
  }
  return {
    status: 500,
    body: { code: ERR.internal, msg: err instanceof Error ? err.message : String(err) },
  };
}
