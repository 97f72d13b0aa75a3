/**
 * A pod's attachment as a value, and the operations that bring a network
 * from what it has to it. Pure: no process runs here. The plan is the
 * desired state (link, key, port, addresses, routes, peers); `podOps`
 * compares it with what was seen and returns only what is missing, in the
 * order that works on both WireGuard backends, so applying a plan twice
 * does nothing the second time.
 *
 * The two backends differ in one thing here: where the pod's device is
 * reached once its link is in the pod. A kernel interface is a netlink
 * object of the namespace it is in, under its current name; wireguard-go
 * serves its control socket in the node's namespace under the name it was
 * created with. Both bind their UDP socket in the node's namespace (where
 * they were created), and the kernel picks its random port only when the
 * link comes up: the node learns the port after the link is up in the pod.
 */
import { byFamily, hostPrefix } from "../../lib/domain/address.ts";
import type { Backend, DeviceConfig, Peer } from "../../lib/wireguard/mod.ts";

/** Keep-alive interval of a pod's peer (the node), in seconds. */
export const POD_KEEPALIVE_S = 25;

/** Everything a pod's attachment is. */
export interface PodPlan {
  /** `containerId/ifname`, for messages. */
  readonly owner: string;
  /** The link's machine-unique creation name in the node's namespace. */
  readonly wgName: string;
  readonly ifname: string;
  readonly netns: string;
  readonly mtu: number;
  readonly publicKey: string;
  /** The pod's addresses, IPv4 first. */
  readonly addresses: readonly string[];
  /** The addresses as /32 and /128: what the pod's link has and the node's peer allows. */
  readonly cidrs: readonly string[];
  /** Default routes through the pod's link, one per family it has. */
  readonly routes: readonly string[];
  readonly nodeInterface: string;
  /** The pod's one peer: the node, on loopback, for every destination. */
  readonly nodePeer: Peer;
}

/** What a plan is made from: the pod's own facts and the node's peer. */
export type PodPlanInput = Omit<PodPlan, "cidrs" | "routes" | "nodePeer"> & {
  readonly nodePublicKey: string;
  readonly nodeListenPort: number;
};

/** The plan of a pod's attachment. */
export function planPod(i: PodPlanInput): PodPlan {
  const [v4, v6] = byFamily(i.addresses);
  return {
    owner: i.owner,
    wgName: i.wgName,
    ifname: i.ifname,
    netns: i.netns,
    mtu: i.mtu,
    publicKey: i.publicKey,
    addresses: [...i.addresses],
    cidrs: hostCidrs(i.addresses),
    routes: [...(v4 ? ["0.0.0.0/0"] : []), ...(v6 ? ["::/0"] : [])],
    nodeInterface: i.nodeInterface,
    nodePeer: {
      publicKey: i.nodePublicKey,
      endpoint: `127.0.0.1:${i.nodeListenPort}`,
      allowedIps: ["0.0.0.0/0", "::/0"],
    },
  };
}

/** The node-side peer of a pod whose device listens on `port`. */
export function podPeerOnNode(plan: PodPlan, port: number): Peer {
  return { publicKey: plan.publicKey, endpoint: `127.0.0.1:${port}`, allowedIps: plan.cidrs };
}

/** The pod device's first configuration: its key, a free port, the node as its one peer. */
export function firstConfig(plan: PodPlan, privateKey: string): DeviceConfig {
  return { privateKey, listenPort: 0, replacePeers: true, peers: [plan.nodePeer] };
}

/** Where a device is reached: its name, and the namespace (absent: the node's). */
export interface DeviceAt {
  readonly name: string;
  readonly netns?: string;
}

/** Where the pod's device is reached once its link is in the pod (see the module comment). */
export function podDevice(
  backend: Backend,
  plan: { readonly wgName: string; readonly ifname: string; readonly netns: string },
): DeviceAt {
  return backend === "kernel" ? { name: plan.ifname, netns: plan.netns } : { name: plan.wgName };
}

/** What is there of a pod's attachment. */
export interface PodSeen {
  /** The pod's link: in the node's namespace (never moved) or in the pod; absent when neither. */
  readonly link?: {
    readonly in: "node" | "pod";
    /** Its name there (the creation name, or the ifname once renamed). */
    readonly name: string;
    /** The public key of its device; undefined before it is keyed. */
    readonly publicKey: string | undefined;
    readonly up: boolean;
    /** Its addresses as `address/prefix`. */
    readonly cidrs: readonly string[];
    /** Destinations routed through it. */
    readonly routes: readonly string[];
    readonly listenPort: number;
    /** The keep-alive its device sends the node with (0: none); undefined without that peer. */
    readonly nodeKeepalive: number | undefined;
  };
  /** The node interface's peer with the pod's key, if any. */
  readonly nodePeer?: { readonly endpoint: string | null; readonly allowedIps: readonly string[] };
}

/** One step toward a plan. */
export type PodOp =
  | { readonly op: "create" }
  | { readonly op: "key" }
  /** Into the pod, renamed, its MTU set; from the node's namespace, or renamed in the pod. */
  | { readonly op: "move"; readonly from: "node" | { readonly pod: string } }
  | { readonly op: "address"; readonly cidr: string }
  | { readonly op: "up" }
  | { readonly op: "route"; readonly dst: string }
  | { readonly op: "nodePeer" }
  | { readonly op: "keepalive" };

/**
 * The operations that take `seen` to `plan`, in order; none when it is
 * there. A link of another key (not this attachment's) is not ours to
 * change: the caller refuses it before planning.
 */
export function podOps(plan: PodPlan, seen: PodSeen): PodOp[] {
  const ops: PodOp[] = [];
  const link = seen.link;
  if (link === undefined) ops.push({ op: "create" });
  if (link?.publicKey !== plan.publicKey) ops.push({ op: "key" });
  if (link?.in !== "pod" || link.name !== plan.ifname) {
    ops.push({ op: "move", from: link?.in === "pod" ? { pod: link.name } : "node" });
  }
  const inPod = link?.in === "pod" && link.name === plan.ifname ? link : undefined;
  for (const cidr of plan.cidrs) {
    if (!inPod?.cidrs.includes(cidr)) ops.push({ op: "address", cidr });
  }
  if (!inPod?.up) ops.push({ op: "up" });
  for (const dst of plan.routes) if (!inPod?.routes.includes(dst)) ops.push({ op: "route", dst });
  // The port is known only once the link is up where it ends (the kernel's).
  const port = ops.length === 0 ? inPod?.listenPort ?? 0 : 0;
  const peer = seen.nodePeer;
  if (
    port === 0 || peer === undefined || peer.endpoint !== `127.0.0.1:${port}` ||
    !sameSet(peer.allowedIps, plan.cidrs)
  ) ops.push({ op: "nodePeer" });
  if (ops.length > 0 || inPod?.nodeKeepalive !== POD_KEEPALIVE_S) ops.push({ op: "keepalive" });
  return ops;
}

/** What a missing step means, as CHECK reports it. */
export function describeMissing(plan: PodPlan, op: PodOp): string {
  switch (op.op) {
    case "create":
    case "move":
      return `interface ${plan.ifname} is missing in ${plan.netns}`;
    case "key":
      return `interface ${plan.ifname} has another key`;
    case "address":
      return `address ${op.cidr} is missing`;
    case "up":
      return `interface ${plan.ifname} is down`;
    case "route":
      return `default route ${op.dst} via ${plan.ifname} is missing`;
    case "nodePeer":
      return "the node-side peer is missing or differs";
    case "keepalive":
      return `the node peer of ${plan.ifname} is missing or has no keep-alive`;
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join() === [...b].sort().join();
}

/** A pod's addresses as /32 and /128. */
export function hostCidrs(addresses: readonly string[]): string[] {
  return addresses.map(hostPrefix);
}
