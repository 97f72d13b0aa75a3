/**
 * A stateful fake of the network pods are set up in: namespaces holding
 * links, each with its WireGuard device, and the node interface. It
 * interprets the pod network's operations with the two backends' own
 * semantics, as far as the pod manager depends on them:
 *
 * - kernel: a `wireguard` link found by its current name in its namespace;
 *   its UDP socket (in the namespace it was created in) is bound only once
 *   the link is up, and closed by a move;
 * - wireguard-go: a `tun` link whose device is found by its creation name
 *   from anywhere (its control socket); its socket is bound at creation and
 *   survives the move.
 *
 * A namespace deleted takes its links along. `failAt(n)` makes the n-th
 * changing operation from now fail (once), for rollback tests.
 */
import type { Backend, DeviceConfig, InterfaceState, PeerState } from "../../lib/wireguard/mod.ts";
import { publicKeyOf } from "../../lib/wireguard/mod.ts";
import type { LinkStep } from "../../lib/ip/mod.ts";
import type { PodNetwork, PodPlace } from "../../modes/node/pod_network.ts";
import type { DeviceAt, PodSeen } from "../../modes/node/pod_plan.ts";

interface FakePeer {
  endpoint: string | null;
  allowedIps: string[];
  keepalive: number;
}

export interface FakeLink {
  readonly kind: "wireguard" | "tun";
  /** The name it was created with (wireguard-go's socket name). */
  readonly creationName: string;
  name: string;
  up: boolean;
  mtu: number;
  cidrs: string[];
  routes: string[];
  publicKey: string;
  /** The port asked for (0: any). */
  port: number;
  /** The port bound now (0: none). */
  bound: number;
  peers: Map<string, FakePeer>;
}

/** The node's namespace. */
const NODE = "";

/** Renames the link `from` of a namespace to `ifname` with `mtu`; a taken name fails as the kernel's does. */
function renameIn(
  links: Map<string, FakeLink>,
  from: string,
  to: { ifname: string; mtu: number },
): void {
  const l = links.get(from)!;
  if (links.has(to.ifname)) throw new Error(`RTNETLINK answers: File exists (${to.ifname})`);
  links.delete(from);
  l.name = to.ifname;
  l.mtu = to.mtu;
  links.set(to.ifname, l);
}

export class FakePodNetwork implements PodNetwork {
  readonly namespaces = new Map<string, Map<string, FakeLink>>([[NODE, new Map()]]);
  /** Every operation, changing or not, as `op args`. */
  readonly log: string[] = [];
  #backend: Backend | undefined;
  readonly #kind: Backend;
  #nextPort = 40000;
  #failIn: number | undefined;
  /** Changing operations so far. */
  changes = 0;

  constructor(kind: Backend, node: { iface: string; publicKey: string; port: number }) {
    this.#kind = kind;
    this.#backend = kind;
    const link = this.#newLink(node.iface);
    link.publicKey = node.publicKey;
    link.port = node.port;
    link.bound = node.port;
    link.up = true;
    this.namespaces.get(NODE)!.set(node.iface, link);
  }

  get backend(): Backend | undefined {
    return this.#backend;
  }

  /** Makes the `n`-th changing operation from now fail once (0: the next one). */
  failAt(n: number): void {
    this.#failIn = n;
  }

  addNetns(path: string): void {
    this.namespaces.set(path, new Map());
  }

  /** Deletes a namespace and every link in it (their sockets close). */
  deleteNetns(path: string): void {
    this.namespaces.delete(path);
  }

  /** The link of that name in a namespace ("" the node's). */
  link(netns: string, name: string): FakeLink | undefined {
    return this.namespaces.get(netns)?.get(name);
  }

  /** Every link but the node interface, as `netns/name`. */
  podLinks(nodeIface: string): string[] {
    const out: string[] = [];
    for (const [ns, links] of this.namespaces) {
      for (const name of links.keys()) {
        if (!(ns === NODE && name === nodeIface)) out.push(`${ns}/${name}`);
      }
    }
    return out.sort();
  }

  /** The UDP ports bound in the node's namespace (every device's socket is there). */
  boundPorts(): Set<number> {
    const out = new Set<number>();
    for (const links of this.namespaces.values()) {
      for (const l of links.values()) if (l.bound > 0) out.add(l.bound);
    }
    return out;
  }

  #change(what: string): void {
    this.log.push(what);
    this.changes++;
    if (this.#failIn === undefined) return;
    if (this.#failIn-- === 0) {
      this.#failIn = undefined;
      throw new Error(`injected failure at ${what}`);
    }
  }

  #newLink(name: string): FakeLink {
    return {
      kind: this.#kind === "kernel" ? "wireguard" : "tun",
      creationName: name,
      name,
      up: false,
      mtu: 1420,
      cidrs: [],
      routes: [],
      publicKey: "",
      port: 0,
      bound: 0,
      peers: new Map(),
    };
  }

  #bind(l: FakeLink): void {
    l.bound = l.port > 0 ? l.port : this.#nextPort++;
  }

  /** The device `at` names, as `wg` would find it; throws like `wg` when there is none. */
  #device(at: DeviceAt): FakeLink {
    const ns = this.namespaces.get(at.netns ?? NODE);
    const kernel = ns?.get(at.name);
    if (kernel?.kind === "wireguard") return kernel;
    // wireguard-go: its socket by creation name, whatever the namespace.
    for (const links of this.namespaces.values()) {
      for (const l of links.values()) if (l.kind === "tun" && l.creationName === at.name) return l;
    }
    throw new Error(`Unable to access interface ${at.name}: No such device`);
  }

  createLink(name: string): Promise<Backend> {
    this.#change(`create ${name}`);
    const node = this.namespaces.get(NODE)!;
    if (node.has(name)) throw new Error(`RTNETLINK answers: File exists (${name})`);
    const l = this.#newLink(name);
    if (l.kind === "tun") this.#bind(l);
    node.set(name, l);
    return Promise.resolve(this.#kind);
  }

  async configure(at: DeviceAt, config: DeviceConfig): Promise<void> {
    this.#change(`configure ${at.netns ?? ""}/${at.name}`);
    const d = this.#device(at);
    if (config.privateKey !== undefined) d.publicKey = await publicKeyOf(config.privateKey);
    if (config.listenPort !== undefined) {
      d.port = config.listenPort;
      if (d.kind === "tun" || d.up) this.#bind(d);
    }
    if (config.replacePeers) d.peers.clear();
    for (const p of config.peers ?? []) {
      if (p.remove) {
        d.peers.delete(p.publicKey);
        continue;
      }
      const peer = d.peers.get(p.publicKey) ?? { endpoint: null, allowedIps: [], keepalive: 0 };
      if (p.endpoint !== undefined) peer.endpoint = p.endpoint;
      if (p.persistentKeepalive !== undefined) peer.keepalive = p.persistentKeepalive;
      if (p.allowedIps !== undefined) peer.allowedIps = [...p.allowedIps];
      d.peers.set(p.publicKey, peer);
    }
  }

  // deno-lint-ignore require-await
  async listenPort(at: DeviceAt): Promise<number> {
    this.log.push(`port ${at.netns ?? ""}/${at.name}`);
    return this.#device(at).bound;
  }

  // deno-lint-ignore require-await
  async show(at: DeviceAt): Promise<InterfaceState> {
    const d = this.#device(at);
    const peers: PeerState[] = [...d.peers].map(([publicKey, p]) => ({
      publicKey,
      hasPresharedKey: false,
      endpoint: p.endpoint,
      allowedIps: p.allowedIps,
      latestHandshake: 0,
      rxBytes: 0,
      txBytes: 0,
      persistentKeepalive: p.keepalive || null,
    }));
    return { publicKey: d.publicKey, listenPort: d.bound, fwmark: null, peers };
  }

  move(name: string, netns: string, ifname: string, mtu: number): Promise<void> {
    this.#change(`move ${name} ${netns} ${ifname}`);
    const node = this.namespaces.get(NODE)!;
    const l = node.get(name);
    if (l === undefined) throw new Error(`Cannot find device "${name}"`);
    const pod = this.namespaces.get(netns);
    if (pod === undefined) throw new Error(`Invalid "netns" value ${netns}`);
    node.delete(name);
    pod.set(name, l);
    l.up = false;
    // The kernel's socket closes with the move; wireguard-go's stays.
    if (l.kind === "wireguard") l.bound = 0;
    // The rename after the move fails on a taken name: the link stays in the pod as it was.
    renameIn(pod, name, { ifname, mtu });
    return Promise.resolve();
  }

  rename(netns: string, from: string, ifname: string, mtu: number): Promise<void> {
    this.#change(`rename ${netns} ${from} ${ifname}`);
    const pod = this.namespaces.get(netns);
    const l = pod?.get(from);
    if (pod === undefined || l === undefined) throw new Error(`Cannot find device "${from}"`);
    renameIn(pod, from, { ifname, mtu });
    return Promise.resolve();
  }

  inside(netns: string, ifname: string, steps: readonly LinkStep[]): Promise<void> {
    this.#change(`inside ${netns} ${ifname} ${steps.map((s) => s.op).join(",")}`);
    const l = this.namespaces.get(netns)?.get(ifname);
    if (l === undefined) throw new Error(`Cannot find device "${ifname}"`);
    for (const s of steps) {
      if (s.op === "address") {
        if (l.cidrs.includes(s.cidr)) throw new Error("RTNETLINK answers: File exists");
        l.cidrs.push(s.cidr);
      } else if (s.op === "up") {
        l.up = true;
        if (l.kind === "wireguard" && l.bound === 0) this.#bind(l);
      } else {
        if (!l.up) throw new Error("Error: Nexthop device is not up.");
        if (l.routes.includes(s.dst)) throw new Error("RTNETLINK answers: File exists");
        l.routes.push(s.dst);
      }
    }
    return Promise.resolve();
  }

  see(place: PodPlace, publicKey: string, nodeInterface: string): Promise<PodSeen> {
    const node = this.namespaces.get(NODE)!.get(nodeInterface);
    const np = node?.peers.get(publicKey);
    const nodePeer = np && { endpoint: np.endpoint, allowedIps: np.allowedIps };
    const pod = this.namespaces.get(place.netns);
    const inPod = pod?.get(place.ifname) ?? pod?.get(place.wgName);
    const inNode = this.namespaces.get(NODE)!.get(place.wgName);
    const l = inPod ?? inNode;
    if (l === undefined) return Promise.resolve(nodePeer ? { nodePeer } : {});
    const toNode = node && l.peers.get(node.publicKey);
    return Promise.resolve({
      link: {
        in: inPod ? "pod" : "node",
        name: l.name,
        publicKey: l.publicKey || undefined,
        up: l.up,
        cidrs: [...l.cidrs],
        routes: inPod ? [...l.routes] : [],
        listenPort: l.bound,
        nodeKeepalive: toNode === undefined ? undefined : toNode.keepalive,
      },
      ...(nodePeer ? { nodePeer } : {}),
    });
  }

  deleteLink(place: PodPlace): Promise<void> {
    this.#change(`delete ${place.wgName}`);
    const pod = this.namespaces.get(place.netns);
    for (const name of [place.wgName, place.ifname]) {
      if (pod?.get(name)) {
        pod.delete(name);
        return Promise.resolve();
      }
    }
    this.namespaces.get(NODE)!.delete(place.wgName);
    return Promise.resolve();
  }

  exists(path: string): Promise<boolean> {
    return Promise.resolve(path !== "" && this.namespaces.has(path));
  }
}
