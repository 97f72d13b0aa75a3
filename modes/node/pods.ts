/**
 * Pods on this node: each gets its own WireGuard interface and key, created
 * in the node namespace (so its UDP socket stays here), configured with one
 * peer (the node), moved into the pod's namespace and renamed; the node
 * interface gets the pod as a peer with exactly its /32 and /128.
 *
 * Every operation on one (container id, ifname) is serialised; a record is
 * written before anything is created, so a restart can finish or undo it.
 */
import { byFamily } from "../../lib/domain/address.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import { NetnsInspector } from "../../lib/ip/netns.ts";
import { boundUdpPorts } from "../../lib/ip/sockets.ts";
import type { Logger } from "../../lib/log.ts";
import { generateKeyPair, type WireGuardControl } from "../../lib/wireguard/mod.ts";
import type { NodeStateStore, PodRecord } from "../../lib/store/node_state.ts";
import type { Attachment, CniResult, CniRoute, GcResponse } from "../../lib/api/local_types.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import { ConflictError, NoSpaceError } from "../../lib/errors.ts";
import { KeyedMutex } from "./mutex.ts";
import { SWITCH_WAIT_MS } from "./mesh.ts";
import { applyPod, type PodNetwork, SystemPodNetwork } from "./pod_network.ts";
import {
  describeMissing,
  type DeviceAt,
  planPod,
  POD_KEEPALIVE_S,
  podDevice,
  podOps,
  podPeerOnNode,
  type PodPlan,
} from "./pod_plan.ts";
import { isKernelOwner, kernelOwner, type KernelPod, kernelPods, Liveness } from "./recovery.ts";

/** Address reservations of the node's subnets (one address per family per owner). */
export interface PodAddresses {
  /** The node's subnets the addresses come from. */
  readonly subnets: readonly string[];
  /** The owner's addresses (IPv4 first), allocating them if needed. Atomic. */
  allocate(owner: string): string[];
  /** Reserves exactly these addresses for the owner (a reservation rebuilt from the kernel). */
  claim(owner: string, addresses: readonly string[]): void;
  release(owner: string): void;
  get(owner: string): string[] | undefined;
  /** Owners holding a reservation. */
  owners(): string[];
  /** Free addresses left in the smallest family. */
  free(): bigint;
  /** Addresses held and free in each subnet. */
  usage(): { subnet: string; family: 4 | 6; used: number; free: bigint }[];
}

export interface PodManagerOptions {
  readonly runner: Runner;
  readonly wg: WireGuardControl;
  readonly logger: Logger;
  readonly store: NodeStateStore;
  readonly addresses: PodAddresses;
  readonly nodeInterface: string;
  readonly nodePublicKey: string;
  readonly nodeListenPort: number;
  readonly mtu: number;
  /** Judges CNI_NETNS (default: the real files of this process). */
  readonly netns?: Pick<NetnsInspector, "inspect">;
  /** The network pods are set up in (default: this machine's, through `runner` and `wg`). */
  readonly network?: PodNetwork;
  /** The UDP ports bound in the node's namespace (default: from /proc). */
  readonly udpPorts?: () => Promise<ReadonlySet<number>>;
  /** How long a pod's new key waits for its session with the node (default `SWITCH_WAIT_MS`). */
  readonly sessionWaitMs?: number;
  /**
   * Reservations and node-interface peers that are not pods (workloads that
   * bring their own interface): reconcile and GC leave them alone.
   */
  readonly others?: () => {
    readonly owners: ReadonlySet<string>;
    readonly keys: ReadonlySet<string>;
  };
  /**
   * Direct pod paths: before a pod's addresses are released, `forget` takes
   * it off every direct peer it has, on every node; false when a node did
   * not confirm, and the addresses then stay reserved under `holdAs(owner)`.
   */
  readonly direct?: {
    forget(record: PodRecord): Promise<boolean>;
    holdAs(owner: string): string;
    /** CHECK: the pod's direct peers brought in line with what was recorded. */
    check(record: PodRecord): Promise<void>;
  };
}

/** A pod's request as the local API passes it on. */
export interface PodRequest {
  readonly containerId: string;
  readonly ifname: string;
  readonly netns: string;
  readonly prevResult?: CniResult;
  readonly cniVersion: string;
  /** The runtime's name of the pod (`NAMESPACE/NAME`), when CNI_ARGS gave one. */
  readonly podName?: string;
}

const encoder = new TextEncoder();

/**
 * The machine-unique creation name of a pod's interface (≤ 15 bytes): the
 * control sockets of wireguard-go are shared by every namespace.
 */
export async function podWgName(nodeInterface: string, containerId: string, ifname: string) {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    encoder.encode(`${nodeInterface}\0${containerId}\0${ifname}`),
  );
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `wgp${hex.slice(0, 12)}`;
}

/** The owner key of an attachment in the address store. */
/** Pods whose node peer moves to a new node key, or that get a new key, at once. */
const NODE_KEY_BATCH = 16;

export function ownerOf(containerId: string, ifname: string): string {
  return `${containerId}/${ifname}`;
}

export class PodManager {
  readonly #o: PodManagerOptions;
  readonly #lock = new KeyedMutex();
  readonly #tag: string;
  readonly #netns: Pick<NetnsInspector, "inspect">;
  readonly #net: PodNetwork;
  readonly #udpPorts: () => Promise<ReadonlySet<number>>;
  /**
   * Pods the kernel has and the store lost (emptied, or rolled back), by
   * public key: their addresses stay reserved (owner `kernel:KEY`) until a
   * DEL names them or their socket proves them gone.
   */
  #recovered = new Map<string, KernelPod>();
  /** The node's public key: each pod's one peer (it changes with a key rotation). */
  #nodeKey: string;

  constructor(options: PodManagerOptions) {
    this.#o = options;
    this.#nodeKey = options.nodePublicKey;
    this.#tag = options.nodeInterface;
    this.#netns = options.netns ?? new NetnsInspector(options.runner);
    this.#net = options.network ?? new SystemPodNetwork(options.runner, options.wg);
    this.#udpPorts = options.udpPorts ?? boundUdpPorts;
  }

  /** Pods known only from the kernel (see {@linkcode reconcile}). */
  recovered(): KernelPod[] {
    return [...this.#recovered.values()];
  }

  /** Refuses (code 4) a CNI_NETNS that is not a network namespace other than the node's. */
  async #checkNetns(verb: string, req: PodRequest): Promise<void> {
    const v = await this.#netns.inspect(req.netns);
    if (!v.ok) {
      throw new CniError(
        ERR.invalidEnv,
        `Cannot ${verb} ${ownerOf(req.containerId, req.ifname)}: CNI_NETNS ${req.netns} ${v.why}`,
      );
    }
  }

  /**
   * The node's next key, ahead of its switch: each pod's interface gets it
   * as a second peer with no allowed IPs and no endpoint, so that the node's
   * first handshake under it is answered and the pod never starts one of
   * its own toward it (two handshakes at once can cross, and WireGuard tries
   * again only five seconds later). Returns how many pods have it.
   */
  async prepareNodeKey(next: string): Promise<number> {
    return await this.#eachPod(
      "cannot give {pod} the node's next key: {error}",
      (at) => this.#net.configure(at, { peers: [{ publicKey: next, allowedIps: [] }] }),
    );
  }

  /** The first address of every pod: where a datagram from the node starts a handshake. */
  podAddresses(): string[] {
    return this.#o.store.all().flatMap((r) => r.addresses.slice(0, 1));
  }

  /**
   * The node's key changed from `from` to `to`: each pod's routes move to
   * the new key's peer and the old key goes, a few pods at a time, each
   * under its lock. With `dialIn` (at the moment of a rotation) the new peer
   * has no endpoint yet: the node starts each handshake, the pod answers and
   * learns where the node is from it, and what the pod sends meanwhile waits
   * in its queue; {@linkcode settleNodeKey} then gives it its endpoint and
   * keep-alive. Without, the pod's keep-alive starts the handshake at once.
   * Returns how many pods moved; a pod that could not is logged (its CHECK
   * says so).
   */
  async useNodeKey(from: string, to: string, options: { dialIn?: boolean } = {}): Promise<number> {
    this.#nodeKey = to;
    return await this.#eachPod(
      "cannot move the node peer of {pod} to the new node key: {error}",
      (at, plan) =>
        this.#net.configure(at, {
          peers: [
            options.dialIn
              ? { publicKey: to, allowedIps: plan.nodePeer.allowedIps }
              : { ...plan.nodePeer, persistentKeepalive: POD_KEEPALIVE_S },
            ...(from !== to ? [{ publicKey: from, remove: true }] : []),
          ],
        }),
    );
  }

  /** Each pod's node peer as a pod has it: the node's endpoint and the keep-alive. */
  async settleNodeKey(): Promise<number> {
    return await this.#eachPod(
      "cannot set the node peer of {pod}: {error}",
      (at, plan) =>
        this.#net.configure(at, {
          peers: [{ ...plan.nodePeer, persistentKeepalive: POD_KEEPALIVE_S }],
        }),
    );
  }

  /** {@linkcode #eachLocked} over every pod, with its device and plan. */
  async #eachPod(
    failed: string,
    fn: (at: DeviceAt, plan: PodPlan) => Promise<void>,
  ): Promise<number> {
    const backend = this.#net.backend;
    if (backend === undefined) return 0;
    return await this.#eachLocked(this.#o.store.all(), failed, (now) => {
      const plan = this.#plan(now);
      return fn(podDevice(backend, plan), plan);
    });
  }

  /**
   * Runs `fn` on each pod of `records` as the store has it now (skipping
   * those gone or keyed anew since), a few at a time, each under its lock;
   * a failure is logged with `failed`. Returns how many succeeded.
   */
  async #eachLocked(
    records: readonly PodRecord[],
    failed: string,
    fn: (now: PodRecord) => Promise<void>,
  ): Promise<number> {
    let done = 0;
    for (let i = 0; i < records.length; i += NODE_KEY_BATCH) {
      await Promise.all(
        records.slice(i, i + NODE_KEY_BATCH).map((r) => {
          const owner = ownerOf(r.containerId, r.ifname);
          return this.#lock.run(owner, async () => {
            const now = this.#o.store.get(r.containerId, r.ifname);
            if (now === undefined || now.publicKey !== r.publicKey) return;
            try {
              await fn(now);
              done++;
            } catch (err) {
              this.#o.logger.warn(failed, { pod: owner, error: err });
            }
          });
        }),
      );
    }
    return done;
  }

  /**
   * Gives pods a new key: those whose key is `maxAgeMs` old or older (every
   * pod with 0), a few at a time, each under its lock (see
   * {@linkcode #rekey}). Returns how many got one; a pod that could not is
   * logged and keeps its key.
   */
  async rotateKeys(maxAgeMs: number, now = Date.now()): Promise<number> {
    const due = this.#o.store.all().filter((r) =>
      r.phase === "ready" && (r.keyedAt ?? r.createdAt) + maxAgeMs <= now
    );
    return await this.#eachLocked(
      due,
      "cannot rotate the key of {pod}: {error}",
      (now) => now.phase === "ready" ? this.#rekey(now) : Promise.reject(new Error("not ready")),
    );
  }

  /**
   * One pod's new key: the record names the next key first (a restart in
   * between then knows it, see {@linkcode reconcile}); the node interface's
   * peer for the pod's addresses becomes the new key, with no endpoint, so
   * the node never starts a handshake the pod's own could cross; the pod's
   * interface takes the new private key, and its keep-alive, set again,
   * starts its handshake at once (what the node sends meanwhile waits in its
   * queue, what the pod sent under the old key in between is lost: a
   * millisecond or so); once the node has the session, the old key goes and
   * the record holds the new key.
   */
  async #rekey(r: PodRecord): Promise<void> {
    const keys = await generateKeyPair();
    const next: PodRecord = { ...r, nextPublicKey: keys.publicKey };
    this.#o.store.put(next);
    const seen = await this.#net.see(r, r.publicKey, this.#o.nodeInterface);
    if (seen.link?.in !== "pod" || seen.link.publicKey !== r.publicKey) {
      this.#o.store.put(r);
      throw new Error(`its interface is not as recorded (${seen.link?.in ?? "missing"})`);
    }
    const backend = this.#net.backend;
    if (backend === undefined) throw new Error("the WireGuard backend is not decided yet");
    const plan = this.#plan(r);
    await this.#net.configure({ name: this.#o.nodeInterface }, {
      peers: [{ publicKey: keys.publicKey, allowedIps: plan.cidrs }],
    });
    await this.#net.configure(podDevice(backend, plan), {
      privateKey: keys.privateKey,
      // Off, then on: turning it on sends a keep-alive, which starts the handshake.
      peers: [
        { publicKey: this.#nodeKey, persistentKeepalive: 0 },
        { publicKey: this.#nodeKey, persistentKeepalive: POD_KEEPALIVE_S },
      ],
    });
    await this.#sessionWith(keys.publicKey);
    await this.#finishRekey(next);
  }

  /**
   * Waits until the node interface has a session with the peer of `key` (a
   * pod's new key: its first handshake since it was added), at most
   * {@linkcode SWITCH_WAIT_MS}.
   */
  async #sessionWith(key: string): Promise<void> {
    const deadline = Date.now() + (this.#o.sessionWaitMs ?? SWITCH_WAIT_MS);
    while (Date.now() < deadline) {
      const node = await this.#net.show({ name: this.#o.nodeInterface }).catch(() => undefined);
      if ((node?.peers.find((p) => p.publicKey === key)?.latestHandshake ?? 0) > 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** The node side of a pod's new key, once the pod's interface has it; returns the record. */
  async #finishRekey(r: PodRecord): Promise<PodRecord> {
    const key = r.nextPublicKey as string;
    const { nextPublicKey: _, ...rest } = r;
    const done: PodRecord = { ...rest, publicKey: key, keyedAt: Date.now() };
    await this.#net.configure({ name: this.#o.nodeInterface }, {
      peers: [podPeerOnNode(this.#plan(done), r.listenPort), {
        publicKey: r.publicKey,
        remove: true,
      }],
    });
    this.#o.store.put(done);
    this.#o.logger.info("pod {pod} has a new key {key}", {
      pod: ownerOf(r.containerId, r.ifname),
      key,
    });
    return done;
  }

  /**
   * A pod key rotation cut short: finished when the pod's interface has the
   * next key; undone when it still has the old one (the node's peer for its
   * addresses is the old key again). Returns the record as it stands after.
   */
  async #settleRekey(r: PodRecord): Promise<PodRecord> {
    const seen = await this.#net.see(r, r.publicKey, this.#o.nodeInterface).catch(() => ({}));
    const has = (seen as { link?: { publicKey?: string } }).link?.publicKey;
    if (has === r.nextPublicKey) return await this.#finishRekey(r);
    const { nextPublicKey: _, ...rest } = r;
    await this.#net.configure({ name: this.#o.nodeInterface }, {
      peers: [podPeerOnNode(this.#plan(rest), r.listenPort), {
        publicKey: r.nextPublicKey as string,
        remove: true,
      }],
    }).catch(() => {});
    this.#o.store.put(rest);
    return rest;
  }

  /** The public keys of every pod this node knows, for the mesh to leave alone. */
  podKeys(): Set<string> {
    return new Set([
      ...this.#o.store.all().flatMap((p) =>
        p.nextPublicKey === undefined ? [p.publicKey] : [p.publicKey, p.nextPublicKey]
      ),
      ...this.#recovered.keys(),
    ]);
  }

  /**
   * The pod the kernel has for (containerId, ifname) among those the store
   * lost: the one whose socket the interface's creation name answers on
   * (wireguard-go), or whose key the link in the pod has (kernel).
   */
  async #identify(
    containerId: string,
    ifname: string,
    netns: string,
  ): Promise<KernelPod | undefined> {
    if (this.#recovered.size === 0) return undefined;
    const net = this.#net;
    const wgName = await podWgName(this.#tag, containerId, ifname);
    const port = await net.listenPort({ name: wgName }).catch(() => 0);
    const byPort = [...this.#recovered.values()].find((p) => port > 0 && p.listenPort === port);
    if (byPort) return byPort;
    if (!(await net.exists(netns))) return undefined;
    const inPod = await net.show({ name: ifname, netns }).catch(() => undefined);
    return inPod && this.#recovered.get(inPod.publicKey);
  }

  /**
   * Makes `pod` (known only from the kernel) the record of (containerId,
   * ifname), moving its reservation; undefined when none is identified.
   */
  async #adopt(
    req: { containerId: string; ifname: string; netns: string },
  ): Promise<PodRecord | undefined> {
    const pod = await this.#identify(req.containerId, req.ifname, req.netns);
    if (pod === undefined || !this.#recovered.has(pod.publicKey)) return undefined;
    const record: PodRecord = {
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netns,
      phase: "ready",
      wgName: await podWgName(this.#tag, req.containerId, req.ifname),
      publicKey: pod.publicKey,
      addresses: pod.addresses,
      listenPort: pod.listenPort,
      createdAt: Date.now(),
    };
    if (!this.#rebase(record, kernelOwner(pod.publicKey))) return undefined;
    this.#recovered.delete(pod.publicKey);
    this.#o.logger.info("pod {pod} known again from the kernel: {addresses}", {
      pod: ownerOf(req.containerId, req.ifname),
      addresses: pod.addresses,
    });
    return record;
  }

  /**
   * Writes `record`, its reservation moved from `from` to exactly its
   * addresses; false (nothing changed) when another owner holds one of them.
   */
  #rebase(record: PodRecord, from: string): boolean {
    const owner = ownerOf(record.containerId, record.ifname);
    try {
      this.#o.store.transaction(() => {
        this.#o.addresses.release(from);
        this.#o.addresses.release(owner);
        this.#o.addresses.claim(owner, record.addresses);
        this.#o.store.put(record);
      });
      return true;
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
      this.#o.logger.error("cannot give {pod} the addresses the kernel has for it: {error}", {
        pod: owner,
        error: err,
      });
      return false;
    }
  }

  async add(req: PodRequest): Promise<CniResult> {
    const owner = ownerOf(req.containerId, req.ifname);
    try {
      return await this.#lock.run(owner, () => this.#add(req));
    } catch (err) {
      if (err instanceof NoSpaceError) {
        throw new CniError(ERR.io, `Cannot add ${owner}: ${err.message}`);
      }
      throw err;
    }
  }

  async #add(req: PodRequest): Promise<CniResult> {
    const { store } = this.#o;
    // Before anything is allocated or started; the pod's name and key are
    // worked out meanwhile.
    const [wgName, keys] = await Promise.all([
      podWgName(this.#tag, req.containerId, req.ifname),
      generateKeyPair(),
      this.#checkNetns("add", req),
    ]);
    const existing = store.get(req.containerId, req.ifname) ?? await this.#adopt(req);
    if (existing) {
      throw new CniError(
        ERR.internal,
        `Cannot add ${req.containerId}/${req.ifname}: it is already attached (addresses ${
          existing.addresses.join(", ")
        }); delete it first`,
      );
    }
    const owner = ownerOf(req.containerId, req.ifname);
    const t0 = performance.now();
    // Timed per ADD, so that concurrent ones are told apart.
    const step = (name: string) =>
      this.#o.logger.debug("ADD {pod} {name} at +{ms} ms", {
        pod: owner,
        name,
        ms: Math.round((performance.now() - t0) * 10) / 10,
      });
    // Write-ahead: the reservation and the record land together, before anything exists.
    const record = store.transaction(() => {
      const addresses = this.#o.addresses.allocate(owner);
      const r: PodRecord = {
        containerId: req.containerId,
        ifname: req.ifname,
        netns: req.netns,
        phase: "adding",
        wgName,
        publicKey: keys.publicKey,
        addresses,
        listenPort: 0,
        createdAt: Date.now(),
        ...(req.podName !== undefined ? { podName: req.podName } : {}),
      };
      store.put(r);
      return r;
    });
    const plan = this.#plan(record);
    let port = 0;
    try {
      // Nothing of it exists yet: every step, from the link's creation on.
      await applyPod(this.#net, plan, {}, podOps(plan, {}), {
        privateKey: keys.privateKey,
        learned: (p) => {
          port = p;
          store.put({ ...record, listenPort: p });
        },
        step,
      });
      step("ready");
      store.put({ ...record, listenPort: port, phase: "ready" });
      this.#o.logger.info("pod {pod} attached: {addresses}", {
        pod: owner,
        addresses: record.addresses,
      });
      return this.result(req, record);
    } catch (err) {
      this.#o.logger.warn("ADD {pod} failed, rolling back: {error}", { pod: owner, error: err });
      await this.#undo(store.get(req.containerId, req.ifname) ?? record);
      throw err;
    }
  }

  /** The plan of a recorded pod. */
  #plan(r: PodRecord): PodPlan {
    return planPod({
      owner: ownerOf(r.containerId, r.ifname),
      wgName: r.wgName,
      ifname: r.ifname,
      netns: r.netns,
      mtu: this.#o.mtu,
      publicKey: r.publicKey,
      addresses: r.addresses,
      nodeInterface: this.#o.nodeInterface,
      nodePublicKey: this.#nodeKey,
      nodeListenPort: this.#o.nodeListenPort,
    });
  }

  /** The CNI 1.1.0 result of a pod, extending a chained prevResult. */
  result(req: PodRequest, record: PodRecord): CniResult {
    const prev = req.prevResult;
    const interfaces = [...(prev?.interfaces ?? [])];
    const index = interfaces.length;
    // A WireGuard interface has no link-layer address; runtimes that parse
    // `mac` unconditionally (podman's CNI backend) get the all-zero one.
    interfaces.push({
      name: req.ifname,
      mac: "00:00:00:00:00:00",
      mtu: this.#o.mtu,
      sandbox: req.netns,
    });
    const [v4, v6] = byFamily(record.addresses);
    const ips = [
      ...(prev?.ips ?? []),
      ...(v4 ? [{ address: `${v4}/32`, interface: index }] : []),
      ...(v6 ? [{ address: `${v6}/128`, interface: index }] : []),
    ];
    const routes: CniRoute[] = [
      ...(prev?.routes ?? []),
      ...(v4 ? [{ dst: "0.0.0.0/0" }] : []),
      ...(v6 ? [{ dst: "::/0" }] : []),
    ];
    return {
      cniVersion: req.cniVersion,
      interfaces,
      ips,
      routes,
      dns: prev?.dns ?? {},
    };
  }

  async del(req: { containerId: string; ifname: string; netns: string }): Promise<void> {
    await this.#lock.run(ownerOf(req.containerId, req.ifname), async () => {
      const record = this.#o.store.get(req.containerId, req.ifname) ?? await this.#adopt(req);
      if (!record) {
        // Never known, or already deleted; a stray reservation is still released.
        try {
          this.#o.store.transaction(() =>
            this.#o.addresses.release(ownerOf(req.containerId, req.ifname))
          );
        } catch (err) {
          if (!(err instanceof NoSpaceError)) throw err;
          throw new CniError(
            ERR.io,
            `Cannot release the addresses of ${
              ownerOf(req.containerId, req.ifname)
            }: ${err.message}`,
          );
        }
        return;
      }
      try {
        await this.#undo(record);
      } catch (err) {
        if (!(err instanceof NoSpaceError)) throw err;
        throw new CniError(
          ERR.io,
          `Cannot finish deleting ${ownerOf(req.containerId, req.ifname)}: ${err.message}; ` +
            "its interface and peer are removed, its record and addresses are kept until a DEL succeeds",
        );
      }
      this.#o.logger.info("pod {pod} detached", { pod: ownerOf(req.containerId, req.ifname) });
    });
  }

  /** Removes everything a record stands for; tolerates parts already gone. */
  async #undo(record: PodRecord): Promise<void> {
    const { store } = this.#o;
    // The node-side peer and the pod interface go at the same time.
    const peerGone = this.#removeNodePeer(record.publicKey).catch((err) =>
      this.#o.logger.warn("cannot remove peer of {pod}: {error}", {
        pod: ownerOf(record.containerId, record.ifname),
        error: err,
      })
    );
    const owner = ownerOf(record.containerId, record.ifname);
    const [, , confirmed] = await Promise.all([
      peerGone,
      this.#net.deleteLink(record),
      // Other nodes that do not answer are handled inside (false); a local
      // failure here leaves only this node's own interfaces behind.
      this.#o.direct?.forget(record).catch((err) => {
        this.#o.logger.error("cannot end the direct paths of {pod}: {error}", {
          pod: owner,
          error: err,
        });
        return true;
      }) ?? true,
    ]);
    store.transaction(() => {
      this.#o.addresses.release(owner);
      // Held until every node confirmed that no direct peer has them.
      if (!confirmed && this.#o.direct) {
        this.#o.addresses.claim(this.#o.direct.holdAs(owner), record.addresses);
      }
      store.delete(record.containerId, record.ifname);
    });
  }

  /** Removes the node interface's peer of that key; no error when it is not there. */
  #removeNodePeer(publicKey: string): Promise<void> {
    return this.#net.configure({ name: this.#o.nodeInterface }, {
      peers: [{ publicKey, remove: true }],
    });
  }

  /** Errors as CniError when anything wgcni made for the pod is missing or different. */
  async check(req: PodRequest): Promise<void> {
    await this.#lock.run(ownerOf(req.containerId, req.ifname), async () => {
      const { store } = this.#o;
      const record = store.get(req.containerId, req.ifname) ?? await this.#adopt(req);
      const what = `${req.containerId}/${req.ifname}`;
      if (!record || record.phase !== "ready") {
        throw new CniError(ERR.unknownContainer, `Cannot check ${what}: no attachment is known`);
      }
      await this.#checkNetns("check", req);
      const reserved = this.#o.addresses.get(ownerOf(req.containerId, req.ifname));
      if (!reserved || reserved.join() !== record.addresses.join()) {
        throw new CniError(
          ERR.internal,
          `Check of ${what} failed: its address reservation is gone`,
        );
      }
      const plan = this.#plan({ ...record, netns: req.netns });
      const seen = await this.#net.see(plan, record.publicKey, this.#o.nodeInterface);
      const missing = podOps(plan, seen);
      if (missing.length > 0) {
        throw new CniError(
          ERR.internal,
          `Check of ${what} failed: ${describeMissing(plan, missing[0]!)}`,
        );
      }
      await this.#o.direct?.check(record);
      // Addresses a chained plugin before this one put on the same interface.
      for (const ip of req.prevResult?.ips ?? []) {
        const iface = req.prevResult?.interfaces?.[ip.interface ?? -1];
        if (iface?.name === req.ifname && !seen.link?.cidrs.includes(ip.address)) {
          throw new CniError(
            ERR.internal,
            `Check of ${what} failed: address ${ip.address} is missing`,
          );
        }
      }
    });
  }

  /**
   * Releases every attachment not in `valid`; carries on past failures. A
   * listed attachment the store lost is known again from the kernel; a pod
   * known only from the kernel is released once its socket proves it gone.
   */
  async gc(valid: readonly Attachment[]): Promise<GcResponse> {
    const keep = new Set(valid.map((a) => ownerOf(a.containerId, a.ifname)));
    const released: Attachment[] = [];
    const failed: (Attachment & { msg: string })[] = [];
    for (const a of valid) {
      if (this.#recovered.size === 0) break;
      if (this.#o.store.get(a.containerId, a.ifname)) continue;
      const req = { containerId: a.containerId, ifname: a.ifname, netns: "" };
      await this.#lock.run(ownerOf(a.containerId, a.ifname), async () => {
        if (!this.#o.store.get(a.containerId, a.ifname)) await this.#adopt(req);
      }).catch((err) => failed.push({ ...a, msg: String(err) }));
    }
    for (const r of this.#o.store.all()) {
      if (keep.has(ownerOf(r.containerId, r.ifname))) continue;
      try {
        await this.del(r);
        released.push({ containerId: r.containerId, ifname: r.ifname });
      } catch (err) {
        failed.push({ containerId: r.containerId, ifname: r.ifname, msg: String(err) });
      }
    }
    await this.sweepRecovered().catch((err) =>
      this.#o.logger.warn("GC cannot tell which recovered pods are gone: {error}", { error: err })
    );
    // Reservations without a record (a crash between steps of an older run).
    const known = new Set([
      ...this.#o.store.all().map((r) => ownerOf(r.containerId, r.ifname)),
      ...(this.#o.others?.().owners ?? []),
    ]);
    for (const owner of this.#o.addresses.owners()) {
      if (!keep.has(owner) && !known.has(owner) && !isKernelOwner(owner)) {
        this.#o.store.transaction(() => this.#o.addresses.release(owner));
      }
    }
    return { released, failed };
  }

  /**
   * Releases the pods known only from the kernel whose socket proves them
   * gone: their node-side peer and their reservation. Returns how many.
   */
  async sweepRecovered(): Promise<number> {
    if (this.#recovered.size === 0) return 0;
    const { nodeInterface, logger } = this.#o;
    const [bound, node] = await Promise.all([
      this.#udpPorts(),
      this.#net.show({ name: nodeInterface }),
    ]);
    const live = new Liveness(
      bound,
      [...kernelPods(node.peers, this.#o.addresses.subnets).values()].map((p) => ({
        key: p.publicKey,
        port: p.listenPort,
      })),
    );
    let gone = 0;
    for (const pod of [...this.#recovered.values()]) {
      if (live.alive(pod.publicKey, pod.listenPort)) continue;
      await this.#removeNodePeer(pod.publicKey);
      this.#o.store.transaction(() => this.#o.addresses.release(kernelOwner(pod.publicKey)));
      this.#recovered.delete(pod.publicKey);
      gone++;
      logger.info("recovered pod {addresses} is gone: released", { addresses: pod.addresses });
    }
    return gone;
  }

  /** Runs {@linkcode sweepRecovered} every `everyMs` while pods known only from the kernel remain. */
  sweepWhileRecovered(signal: AbortSignal, everyMs = 30_000): void {
    const timer = setInterval(() => {
      if (this.#recovered.size === 0) return;
      this.sweepRecovered().catch((err) =>
        this.#o.logger.warn("cannot tell which recovered pods are gone: {error}", { error: err })
      );
    }, everyMs);
    signal.addEventListener("abort", () => clearInterval(timer), { once: true });
  }

  /**
   * After a restart: roll back half-done ADDs (finish those the kernel shows
   * complete), release pods whose namespace or interface is gone (a reboot,
   * a lost DEL), restore missing node-side peers of live pods, and drop
   * reservations nothing explains. Live pods are untouched.
   *
   * The kernel is the authority where the store disagrees with it: a store
   * emptied or rolled back (a torn WAL) lacks pods the node interface still
   * has as peers. Those are rebuilt: a record that names the same attachment
   * follows what the kernel has, the others keep their addresses reserved
   * until a DEL names them or their socket proves them gone. Nothing is ever
   * handed out that a live pod holds.
   */
  async reconcile(): Promise<{
    rolledBack: number;
    finished: number;
    released: number;
    restored: number;
    recovered: number;
  }> {
    let rolledBack = 0, finished = 0, released = 0, restored = 0;
    const { store, addresses, logger, nodeInterface } = this.#o;
    const net = this.#net;
    // Key rotations cut short first: what follows reads the node interface's peers.
    for (const r of store.all()) {
      if (r.nextPublicKey !== undefined && r.phase === "ready") await this.#settleRekey(r);
    }
    const node = await net.show({ name: nodeInterface }).catch(() => undefined);
    const inKernel = kernelPods(node?.peers ?? [], addresses.subnets);
    let live: Liveness | undefined;
    try {
      live = new Liveness(
        await this.#udpPorts(),
        [...inKernel.values()].map((p) => ({ key: p.publicKey, port: p.listenPort })),
      );
    } catch (err) {
      logger.warn("cannot tell live pod interfaces from gone ones; keeping every pod: {error}", {
        error: err,
      });
    }
    const records = store.all();
    const others = this.#o.others?.();
    const named = new Set([...records.map((r) => r.publicKey), ...(others?.keys ?? [])]);
    this.#recovered = new Map([...inKernel].filter(([key]) => !named.has(key)));
    const lost = this.#recovered.size;
    let rebuilt = 0;
    for (let r of records) {
      const owner = ownerOf(r.containerId, r.ifname);
      let pod = inKernel.get(r.publicKey);
      if (pod === undefined) {
        // The same attachment added again after the point the store went back to.
        const again = await this.#identify(r.containerId, r.ifname, r.netns);
        const rebased = again && {
          ...r,
          publicKey: again.publicKey,
          addresses: again.addresses,
          listenPort: again.listenPort,
        };
        if (again && rebased && this.#rebase(rebased, kernelOwner(again.publicKey))) {
          r = rebased;
          this.#recovered.delete(again.publicKey);
          pod = again;
          rebuilt++;
        }
      }
      if (r.phase === "adding") {
        const alive = pod !== undefined &&
          (live === undefined || live.alive(pod.publicKey, pod.listenPort));
        if (pod !== undefined && alive && await this.#complete(r)) {
          // Finished in the kernel, though the store missed the end of it.
          store.put({ ...r, listenPort: pod.listenPort, phase: "ready" });
          finished++;
        } else {
          await this.del(r);
          rolledBack++;
        }
      } else if (!(await net.exists(r.netns))) {
        await this.del(r);
        released++;
      } else if (pod !== undefined || live === undefined) {
        // In step with the kernel, or no way to tell: left as it is.
      } else if (
        live.alive(r.publicKey, r.listenPort) &&
        ![...inKernel.values()].some((p) => p.addresses.some((a) => r.addresses.includes(a)))
      ) {
        await net.configure({ name: nodeInterface }, {
          peers: [podPeerOnNode(this.#plan(r), r.listenPort)],
        });
        restored++;
      } else {
        // No peer and no socket: nothing of it is left but the record (a DEL
        // cut short, or a store rolled back past the DEL). Nothing to delete.
        store.transaction(() => {
          addresses.release(owner);
          store.delete(r.containerId, r.ifname);
        });
        released++;
        logger.warn("pod {pod} has no interface and no peer left: its record is released", {
          pod: owner,
        });
      }
    }
    if (live !== undefined) {
      for (const pod of [...this.#recovered.values()]) {
        if (live.alive(pod.publicKey, pod.listenPort)) continue;
        await this.#removeNodePeer(pod.publicKey);
        this.#recovered.delete(pod.publicKey);
      }
    }
    const keep = new Set([
      ...store.all().map((r) => ownerOf(r.containerId, r.ifname)),
      ...[...this.#recovered.keys()].map(kernelOwner),
      ...(others?.owners ?? []),
    ]);
    store.transaction(() => {
      for (const owner of addresses.owners()) if (!keep.has(owner)) addresses.release(owner);
      for (const pod of this.#recovered.values()) {
        try {
          addresses.claim(kernelOwner(pod.publicKey), pod.addresses);
        } catch (err) {
          logger.error("cannot reserve {addresses} of a live pod again: {error}", {
            addresses: pod.addresses,
            error: err,
          });
        }
      }
    });
    if (lost > 0) {
      logger.warn(
        "the node state in {dir} was emptied or rolled back: the kernel has {lost} pod(s) it " +
          "had no record of ({addresses}); {rebuilt} record(s) rebuilt from the kernel, the " +
          "others keep their addresses reserved until a DEL names them or GC finds them gone",
        {
          dir: store.db.location() ?? "the node state",
          lost,
          rebuilt,
          addresses: [...inKernel.values()].filter((p) => !named.has(p.publicKey))
            .flatMap((p) => p.addresses),
        },
      );
    }
    return { rolledBack, finished, released, restored, recovered: this.#recovered.size };
  }

  /** Whether the pod's interface is up inside the pod with its addresses (a finished ADD). */
  async #complete(r: PodRecord): Promise<boolean> {
    if (!(await this.#net.exists(r.netns))) return false;
    const plan = this.#plan(r);
    const seen = await this.#net.see(plan, r.publicKey, this.#o.nodeInterface);
    const link = seen.link;
    return link?.in === "pod" && link.name === r.ifname && link.up &&
      plan.cidrs.every((c) => link.cidrs.includes(c));
  }
}
