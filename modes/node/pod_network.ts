/**
 * The network a pod's plan is applied to: the few operations and reads the
 * pod manager needs, and the applier that runs a plan's operations on them.
 * `SystemPodNetwork` runs them with `ip` and the backend's WireGuard control
 * (no process per pod on the kernel; wireguard-go's own per pod); unit tests
 * give the pod manager a stateful fake that interprets the same operations.
 */
import { pathExists } from "../../lib/fs.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import { Ip, type LinkInfo, type LinkStep } from "../../lib/ip/link.ts";
import type {
  Backend,
  DeviceConfig,
  InterfaceState,
  WireGuardControl,
} from "../../lib/wireguard/mod.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import {
  type DeviceAt,
  firstConfig,
  POD_KEEPALIVE_S,
  podDevice,
  type PodOp,
  podPeerOnNode,
  type PodPlan,
  type PodSeen,
} from "./pod_plan.ts";

/** Where a pod's link may be: its creation name, its name in the pod, the pod's namespace. */
export interface PodPlace {
  readonly wgName: string;
  readonly ifname: string;
  readonly netns: string;
}

export interface PodNetwork {
  /** The WireGuard backend, once decided. */
  readonly backend: Backend | undefined;
  /** Creates a WireGuard link (down, no address) in the node's namespace; returns the backend. */
  createLink(name: string): Promise<Backend>;
  configure(at: DeviceAt, config: DeviceConfig): Promise<void>;
  /** The device's UDP port (0 when none is bound). */
  listenPort(at: DeviceAt): Promise<number>;
  show(at: DeviceAt): Promise<InterfaceState>;
  /** Moves a link of the node's namespace into `netns`, renamed `ifname`, MTU set, no link-local address. */
  move(name: string, netns: string, ifname: string, mtu: number): Promise<void>;
  /** Renames a link already in `netns` (a rename that failed after its move), MTU set. */
  rename(netns: string, from: string, ifname: string, mtu: number): Promise<void>;
  /** Addresses, up and routes on the pod's link, in one request. */
  inside(netns: string, ifname: string, steps: readonly LinkStep[]): Promise<void>;
  /** What there is of a pod's attachment (see {@linkcode PodSeen}). */
  see(place: PodPlace, publicKey: string, nodeInterface: string): Promise<PodSeen>;
  /**
   * Deletes the pod's link wherever it is: in the pod under its creation name
   * or its ifname (only a TUN or WireGuard link there), else in the node's
   * namespace; no error when it is gone.
   */
  deleteLink(place: PodPlace): Promise<void>;
  /** True when the path (a pod's namespace file) exists. */
  exists(path: string): Promise<boolean>;
}

/** How long a device may take to bind its port once up (wireguard-go rebinds after a move). */
const PORT_WAIT_MS = 2000;

/**
 * Runs a plan's operations in order. `privateKey` is needed when the plan
 * keys the device; `learned(port)` runs once the device's port is known,
 * before the node gets the pod as a peer; `step` names each step done.
 */
export async function applyPod(
  net: PodNetwork,
  plan: PodPlan,
  seen: PodSeen,
  ops: readonly PodOp[],
  hooks: {
    readonly privateKey?: string;
    readonly learned?: (port: number) => void;
    readonly step?: (name: string) => void;
  } = {},
): Promise<void> {
  const backend = (): Backend => {
    // Decided when the node interface was created or adopted, or by the create below.
    if (net.backend === undefined) throw new Error("The WireGuard backend is not decided yet");
    return net.backend;
  };
  // Where the device is now: in the node's namespace until the link moves.
  let at: DeviceAt = seen.link?.in === "pod" ? podDevice(backend(), plan) : { name: plan.wgName };
  let inside: LinkStep[] = [];
  const flush = async () => {
    if (inside.length === 0) return;
    const steps = inside;
    inside = [];
    await net.inside(plan.netns, plan.ifname, steps);
    hooks.step?.("inside");
  };
  for (const op of ops) {
    if (op.op !== "address" && op.op !== "up" && op.op !== "route") await flush();
    switch (op.op) {
      case "create":
        await net.createLink(plan.wgName);
        at = { name: plan.wgName };
        hooks.step?.("create");
        break;
      case "key": {
        if (hooks.privateKey === undefined) {
          throw new Error(`Cannot key the interface of ${plan.owner}: its private key is gone`);
        }
        await net.configure(at, firstConfig(plan, hooks.privateKey));
        hooks.step?.("configured");
        break;
      }
      case "move":
        if (op.from === "node") await net.move(plan.wgName, plan.netns, plan.ifname, plan.mtu);
        else await net.rename(plan.netns, op.from.pod, plan.ifname, plan.mtu);
        at = podDevice(backend(), plan);
        hooks.step?.("moved");
        break;
      case "address":
      case "up":
      case "route":
        inside.push(op);
        break;
      case "nodePeer": {
        const port = await boundPort(net, at);
        if (port === 0) {
          throw new CniError(
            ERR.internal,
            `Cannot add ${plan.owner}: ${plan.wgName} listens on no port`,
          );
        }
        hooks.learned?.(port);
        await net.configure({ name: plan.nodeInterface }, { peers: [podPeerOnNode(plan, port)] });
        hooks.step?.("node peer");
        break;
      }
      case "keepalive":
        // Up and known to the node: the keep-alive starts the pod's handshake
        // at once (one the node sent while the link moved is retried only
        // after five seconds) and keeps the session warm.
        await net.configure(at, {
          peers: [{ ...plan.nodePeer, persistentKeepalive: POD_KEEPALIVE_S }],
        });
        hooks.step?.("keepalive");
        break;
    }
  }
  await flush();
}

/** The device's port; a device that is rebinding (wireguard-go after a move) is asked again. */
async function boundPort(net: PodNetwork, at: DeviceAt): Promise<number> {
  const deadline = Date.now() + PORT_WAIT_MS;
  for (let wait = 5;; wait = Math.min(wait * 2, 100)) {
    const port = await net.listenPort(at);
    if (port !== 0 || Date.now() >= deadline) return port;
    await new Promise((r) => setTimeout(r, wait));
  }
}

/** The pod network of this machine: `ip` through the runner, WireGuard through its control. */
export class SystemPodNetwork implements PodNetwork {
  readonly #ip: Ip;
  readonly #wg: WireGuardControl;

  constructor(runner: Runner, wg: WireGuardControl) {
    this.#ip = new Ip(runner);
    this.#wg = wg;
  }

  get backend(): Backend | undefined {
    return this.#wg.backend;
  }

  createLink(name: string): Promise<Backend> {
    return this.#wg.create(name);
  }

  configure(at: DeviceAt, config: DeviceConfig): Promise<void> {
    return this.#wg.configure(at.name, config, where(at));
  }

  listenPort(at: DeviceAt): Promise<number> {
    return this.#wg.listenPort(at.name, where(at));
  }

  show(at: DeviceAt): Promise<InterfaceState> {
    return this.#wg.show(at.name, where(at));
  }

  async move(name: string, netns: string, ifname: string, mtu: number): Promise<void> {
    const moved = await this.#ip.moveLink(name, netns, ifname, mtu);
    if (moved.code !== 0) {
      // A name taken in the pod fails the rename after the move: the link is
      // then in the pod under its creation name, where a rollback finds it.
      throw new CniError(
        ERR.internal,
        /File exists/.test(moved.stderr)
          ? `Cannot add ${name}: an interface named ${ifname} already exists in ${netns}`
          : `Cannot move ${name} into ${netns} as ${ifname}: ${moved.stderr.trim()}`,
      );
    }
  }

  async rename(netns: string, from: string, ifname: string, mtu: number): Promise<void> {
    const r = await this.#ip.renameLink(from, ifname, mtu, { netns });
    if (r.code !== 0) {
      throw new CniError(
        ERR.internal,
        `Cannot rename ${from} in ${netns} to ${ifname}: ${r.stderr.trim()}`,
      );
    }
  }

  async inside(netns: string, ifname: string, steps: readonly LinkStep[]): Promise<void> {
    const r = await this.#ip.apply(ifname, steps, { netns });
    if (r.code !== 0) {
      throw new CniError(ERR.internal, `Cannot set up ${ifname} in ${netns}: ${r.stderr.trim()}`);
    }
  }

  async see(place: PodPlace, publicKey: string, nodeInterface: string): Promise<PodSeen> {
    const node = await this.#wg.show(nodeInterface).catch(() => undefined);
    const np = node?.peers.find((p) => p.publicKey === publicKey);
    const nodePeer = np && { endpoint: np.endpoint, allowedIps: np.allowedIps };
    let found: { in: "node" | "pod"; link: LinkInfo } | undefined;
    if (await this.exists(place.netns)) {
      const links = await this.#ip.links({ netns: place.netns });
      const ours = (name: string) => links.find((l) => l.ifname === name && isWireGuard(l));
      const link = ours(place.ifname) ?? ours(place.wgName);
      if (link) found = { in: "pod", link };
    }
    if (found === undefined) {
      const link = (await this.#ip.links({}, place.wgName)).find(isWireGuard);
      if (link) found = { in: "node", link };
    }
    if (found === undefined) return nodePeer ? { nodePeer } : {};
    const { link } = found;
    const kind: Backend = link.kind === "wireguard" ? "kernel" : "userspace";
    const at: DeviceAt = found.in === "pod" && kind === "kernel"
      ? { name: link.ifname, netns: place.netns }
      : { name: place.wgName };
    const device = await this.#wg.show(at.name, where(at)).catch(() => undefined);
    const toNode = device?.peers.find((p) => node === undefined || p.publicKey === node.publicKey);
    const routes = found.in === "pod"
      ? await this.#ip.routesVia(link.ifname, { netns: place.netns })
      : [];
    return {
      link: {
        in: found.in,
        name: link.ifname,
        publicKey: device?.publicKey || undefined,
        up: link.up,
        cidrs: link.cidrs,
        routes,
        listenPort: device?.listenPort ?? 0,
        nodeKeepalive: toNode === undefined ? undefined : toNode.persistentKeepalive ?? 0,
      },
      ...(nodePeer ? { nodePeer } : {}),
    };
  }

  async deleteLink(place: PodPlace): Promise<void> {
    if (await this.exists(place.netns)) {
      const links = await this.#ip.links({ netns: place.netns });
      const ours = (name: string) => links.find((l) => l.ifname === name && isWireGuard(l));
      const link = ours(place.wgName) ?? ours(place.ifname);
      if (link) {
        await this.#ip.deleteLink(link.ifname, { netns: place.netns });
        return;
      }
    }
    // Never moved: in this namespace. Deleting the TUN ends its wireguard-go.
    await this.#wg.delete(place.wgName).catch(() => {});
  }

  exists(path: string): Promise<boolean> {
    return pathExists(path);
  }
}

function isWireGuard(l: LinkInfo): boolean {
  return l.kind === "wireguard" || l.kind === "tun";
}

function where(at: DeviceAt): { netns?: string } {
  return at.netns === undefined ? {} : { netns: at.netns };
}
