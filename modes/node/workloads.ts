/**
 * Workloads that bring their own WireGuard interface (a VM whose WireGuard
 * runs in its own kernel, a process with a userspace WireGuard): the seed's
 * three steps of ADD, one call each. Allocate addresses for a name; register
 * the workload's public key, which the node interface gets as a peer with
 * exactly the workload's /32 and /128; read the peers its interface is to
 * have (the node). Release undoes all of it. The workload's private key never
 * reaches the node.
 *
 * Like a pod's, every step on one workload is serialised, and its record is
 * written before the node interface changes, so a restart finishes what a
 * crash cut short. Reservations are owned by `@NAME`, which no pod owner
 * (`CONTAINERID/IFNAME`, a letter or digit first) or pod known only from the
 * kernel (`kernel:KEY`) can be.
 */
import type { Logger } from "../../lib/log.ts";
import {
  isLowOrderKey,
  parseKey,
  type Peer,
  type PeerState,
  type WireGuardControl,
} from "../../lib/wireguard/mod.ts";
import type { NodeStateStore, WorkloadRecord } from "../../lib/store/node_state.ts";
import type {
  WorkloadAddresses,
  WorkloadKeyRequest,
  WorkloadPeers,
  WorkloadReleased,
  WorkloadView,
} from "../../lib/api/local_types.ts";
import { ConflictError, NotFoundError } from "../../lib/errors.ts";
import { KeyedMutex } from "./mutex.ts";
import { hostCidrs } from "./pod_plan.ts";
import type { PodAddresses } from "./pods.ts";

/** The reservation owner of a workload: `@NAME`. */
export function workloadOwner(name: string): string {
  return `@${name}`;
}

/** Whether a reservation owner stands for a workload. */
export function isWorkloadOwner(owner: string): boolean {
  return owner.startsWith("@");
}

/** Keep-alive a workload is told to send the node, in seconds (it may sit behind NAT). */
export const WORKLOAD_KEEPALIVE_S = 25;

/** The owners and public keys of every workload the store has, for pods and the mesh to leave alone. */
export function knownWorkloads(
  store: NodeStateStore,
): { owners: Set<string>; keys: Set<string> } {
  const all = store.workloads();
  return {
    owners: new Set(all.map((w) => workloadOwner(w.name))),
    keys: new Set(all.flatMap((w) => w.publicKey === undefined ? [] : [w.publicKey])),
  };
}

export interface WorkloadManagerOptions {
  readonly wg: Pick<WireGuardControl, "setPeer" | "removePeer" | "show">;
  readonly logger: Logger;
  readonly store: NodeStateStore;
  readonly addresses: PodAddresses;
  readonly nodeName: string;
  readonly nodeInterface: string;
  readonly nodePublicKey: string;
  /** The node interface's UDP port: what a workload on the node's loopback sends to. */
  readonly nodeListenPort: number;
  /** The node's underlay endpoint (`IP:PORT`), for a workload that dials in from elsewhere. */
  readonly nodeEndpoint: string;
  readonly mtu: number;
  /** The cluster's pod and client pools. */
  readonly clusterCidrs: readonly string[];
  /** The keys of every pod the node knows (those known only from the kernel too). */
  readonly podKeys: () => ReadonlySet<string>;
}

function view(r: WorkloadRecord): WorkloadView {
  return {
    name: r.name,
    phase: r.phase,
    addresses: hostCidrs(r.addresses),
    ...(r.publicKey !== undefined ? { publicKey: r.publicKey } : {}),
    ...(r.endpointPort !== undefined ? { endpointPort: r.endpointPort } : {}),
  };
}

export class WorkloadManager {
  readonly #o: WorkloadManagerOptions;
  #nodeKey: string;
  readonly #lock = new KeyedMutex();

  constructor(options: WorkloadManagerOptions) {
    this.#o = options;
    this.#nodeKey = options.nodePublicKey;
  }

  /**
   * The node's key changed: the peers handed out from now on name the new
   * one. The workloads' interfaces are theirs; each takes the new key from
   * its peers again. Returns how many are attached.
   */
  useNodeKey(publicKey: string): number {
    this.#nodeKey = publicKey;
    return this.#o.store.workloads().filter((w) => w.publicKey !== undefined).length;
  }

  /** Every workload the node keeps. */
  list(): WorkloadView[] {
    return this.#o.store.workloads().map(view);
  }

  /**
   * Step one: the workload's addresses, allocated on the first call and the
   * same on every later one. A name that a pod of this node goes by (its
   * container id or its runtime name) is refused: both would read alike in
   * `wgcni status` and in logs.
   */
  allocate(name: string): Promise<WorkloadAddresses> {
    return this.#lock.run(workloadOwner(name), (): Promise<WorkloadAddresses> => {
      const { store, addresses } = this.#o;
      const have = store.workload(name);
      if (have !== undefined) {
        this.#notReleasing("allocate addresses for", have);
        return Promise.resolve({ name, addresses: hostCidrs(have.addresses), created: false });
      }
      const pod = store.all().find((p) =>
        p.containerId === name || p.podName === name || p.podName?.split("/").pop() === name
      );
      if (pod !== undefined) {
        throw new ConflictError(
          `Cannot attach workload ${name}: a pod of this node is attached under that name ` +
            `(${
              pod.podName ?? pod.containerId
            }, ${pod.containerId}/${pod.ifname}); choose another name`,
        );
      }
      // The reservation and the record land together.
      const record = store.transaction(() => {
        const r: WorkloadRecord = {
          name,
          phase: "allocated",
          addresses: addresses.allocate(workloadOwner(name)),
          createdAt: Date.now(),
        };
        store.putWorkload(r);
        return r;
      });
      this.#o.logger.info("workload {name} allocated {addresses}", {
        name,
        addresses: record.addresses,
      });
      return Promise.resolve({ name, addresses: hostCidrs(record.addresses), created: true });
    });
  }

  /**
   * Step two: the node interface gets the workload's public key as a peer
   * with exactly its /32 and /128 (and 127.0.0.1:PORT as its endpoint when
   * the workload's socket is on the node's loopback). The same key again is
   * no change; another key, the node's own, a pod's, another workload's, or
   * one the node interface already has as a peer (a node, a client) is
   * refused with nothing changed.
   */
  async register(name: string, key: WorkloadKeyRequest): Promise<WorkloadView> {
    const publicKey = parseKey(key.publicKey, "the workload's public key");
    if (isLowOrderKey(publicKey)) {
      throw new TypeError(
        `Cannot register workload ${name}: its public key is a low-order Curve25519 point ` +
          "(every shared secret with it is predictable)",
      );
    }
    const port = key.endpointPort;
    if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) {
      throw new RangeError(
        `Cannot register workload ${name}: endpoint port ${port} is not 1-65535`,
      );
    }
    if (port !== undefined && port === this.#o.nodeListenPort) {
      throw new RangeError(
        `Cannot register workload ${name}: endpoint port ${port} is the node interface's own port`,
      );
    }
    return await this.#lock.run(workloadOwner(name), async () => {
      const { store, wg, nodeInterface } = this.#o;
      const have = store.workload(name);
      if (have === undefined) {
        throw new NotFoundError(
          `Cannot register a key for workload ${name}: it has no addresses on this node; allocate them first`,
        );
      }
      this.#notReleasing("register a key for", have);
      if (have.publicKey !== undefined && have.publicKey !== publicKey) {
        throw new ConflictError(
          `Cannot register workload ${name}: it is registered with another public key; ` +
            "detach it and attach it again to change its key",
        );
      }
      const refuse = (whose: string) => {
        throw new ConflictError(`Cannot register workload ${name}: its public key is ${whose}`);
      };
      if (publicKey === this.#nodeKey) refuse("the node's own key");
      if (this.#o.podKeys().has(publicKey)) refuse("the key of a pod of this node");
      const other = () =>
        store.workloads().find((w) => w.name !== name && w.publicKey === publicKey);
      const taken = other();
      if (taken !== undefined) refuse(`workload ${taken.name}'s key`);
      if (have.publicKey !== publicKey) {
        const node = await wg.show(nodeInterface);
        if (node.peers.some((p) => p.publicKey === publicKey)) {
          refuse(`already a peer of ${nodeInterface} (another node, a client or a pod)`);
        }
      }
      // Write-ahead, checked again at the moment of writing (no await between).
      const { endpointPort: _was, ...rest } = have;
      const record: WorkloadRecord = {
        ...rest,
        phase: "registering",
        publicKey,
        ...(port !== undefined ? { endpointPort: port } : {}),
      };
      store.transaction(() => {
        const now = other();
        if (now !== undefined) refuse(`workload ${now.name}'s key`);
        store.putWorkload(record);
      });
      try {
        await wg.setPeer(nodeInterface, this.#peerOf(record));
      } catch (err) {
        // Back to where it stood: a first registration leaves no peer behind.
        if (have.publicKey === undefined) {
          await wg.removePeer(nodeInterface, publicKey).catch(() => {});
        }
        store.putWorkload(have);
        throw err;
      }
      const ready: WorkloadRecord = { ...record, phase: "ready" };
      store.putWorkload(ready);
      this.#o.logger.info("workload {name} registered: {addresses}", {
        name,
        addresses: ready.addresses,
      });
      return view(ready);
    });
  }

  /**
   * Step three: the peers the workload's interface is to have: the node,
   * reached on the node's loopback when the workload said its socket is
   * there, else at the node's underlay endpoint.
   */
  peers(name: string): Promise<WorkloadPeers> {
    return this.#lock.run(workloadOwner(name), () => {
      const have = this.#o.store.workload(name);
      if (have === undefined) {
        throw new NotFoundError(`Cannot read the peers of workload ${name}: it is not attached`);
      }
      this.#notReleasing("read the peers of", have);
      if (have.publicKey === undefined) {
        throw new ConflictError(
          `Cannot read the peers of workload ${name}: no public key is registered for it yet`,
        );
      }
      const o = this.#o;
      return Promise.resolve({
        name,
        addresses: hostCidrs(have.addresses),
        mtu: o.mtu,
        peers: [{
          name: `node/${o.nodeName}`,
          publicKey: this.#nodeKey,
          endpoint: have.endpointPort !== undefined
            ? `127.0.0.1:${o.nodeListenPort}`
            : o.nodeEndpoint,
          allowedIps: ["0.0.0.0/0", "::/0"],
          persistentKeepalive: WORKLOAD_KEEPALIVE_S,
        }],
        clusterCidrs: o.clusterCidrs,
      });
    });
  }

  /**
   * Undoes all of it: the node-side peer, the reservation, the record.
   * Nothing known of the name is no error (a stray reservation is still
   * released). A release cut short is finished by the next release or a restart.
   */
  release(name: string): Promise<WorkloadReleased> {
    return this.#lock.run(workloadOwner(name), async () => {
      const { store, addresses } = this.#o;
      const have = store.workload(name);
      if (have === undefined) {
        store.transaction(() => addresses.release(workloadOwner(name)));
        return { name, released: false };
      }
      await this.#undo(have);
      this.#o.logger.info("workload {name} detached", { name });
      return { name, released: true };
    });
  }

  async #undo(record: WorkloadRecord): Promise<void> {
    const { store, addresses, wg, nodeInterface } = this.#o;
    // Written first: a restart after the peer went must not put it back.
    if (record.phase !== "releasing") store.putWorkload({ ...record, phase: "releasing" });
    if (record.publicKey !== undefined) {
      await wg.removePeer(nodeInterface, record.publicKey);
    }
    store.transaction(() => {
      addresses.release(workloadOwner(record.name));
      store.deleteWorkload(record.name);
    });
  }

  /**
   * After a restart (after the pods' reconciliation): finishes releases and
   * registrations cut short, puts back node-side peers that are missing or
   * differ, and reserves again any address a record holds that its
   * reservation lost. Learned endpoints of live peers are left alone.
   */
  async reconcile(): Promise<{ released: number; restored: number; reserved: number }> {
    const { store, wg, nodeInterface, logger } = this.#o;
    let released = 0, restored = 0, reserved = 0;
    const node = await wg.show(nodeInterface);
    for (const r of store.workloads()) {
      try {
        const done = await this.#reconcileOne(r, node.peers);
        if (done.includes("released")) released++;
        if (done.includes("restored")) restored++;
        if (done.includes("reserved")) reserved++;
      } catch (err) {
        logger.warn("cannot bring workload {name} in step after the restart: {error}", {
          name: r.name,
          error: err,
        });
      }
    }
    return { released, restored, reserved };
  }

  async #reconcileOne(
    r: WorkloadRecord,
    peers: readonly PeerState[],
  ): Promise<("released" | "restored" | "reserved")[]> {
    const { store, addresses, wg, nodeInterface, logger } = this.#o;
    const owner = workloadOwner(r.name);
    const done: ("restored" | "reserved")[] = [];
    if (r.phase === "releasing") {
      await this.#undo(r);
      logger.info("workload {name}: its release is finished", { name: r.name });
      return ["released"];
    }
    if (addresses.get(owner)?.join() !== r.addresses.join()) {
      try {
        store.transaction(() => {
          addresses.release(owner);
          addresses.claim(owner, r.addresses);
        });
        done.push("reserved");
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
        logger.error("cannot reserve the addresses of workload {name} again: {error}", {
          name: r.name,
          error: err,
        });
      }
    }
    if (r.publicKey === undefined) return done;
    const peer = peers.find((p) => p.publicKey === r.publicKey);
    const want = hostCidrs(r.addresses);
    if (peer === undefined || [...peer.allowedIps].sort().join() !== [...want].sort().join()) {
      await wg.setPeer(nodeInterface, this.#peerOf(r));
      done.push("restored");
    }
    if (r.phase !== "ready") store.putWorkload({ ...r, phase: "ready" });
    return done;
  }

  #peerOf(r: WorkloadRecord): Peer {
    return {
      publicKey: r.publicKey as string,
      allowedIps: hostCidrs(r.addresses),
      ...(r.endpointPort !== undefined ? { endpoint: `127.0.0.1:${r.endpointPort}` } : {}),
    };
  }

  #notReleasing(what: string, r: WorkloadRecord): void {
    if (r.phase === "releasing") {
      throw new ConflictError(
        `Cannot ${what} workload ${r.name}: its release did not finish; detach it again`,
      );
    }
  }
}
