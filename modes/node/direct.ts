/**
 * Direct pod paths (the seed's CNI↔CNI mode): one WireGuard encryption
 * between two pods that talk, instead of two (same node) or three (across
 * nodes) through the hub.
 *
 * - **Seeing pairs.** The node's nftables table records every pod → pod
 *   flow it forwards from one of its own pods (a dynamic set whose elements
 *   expire); the node reads it a few times a second.
 * - **A second interface per talking pod.** A pod that gets a direct peer
 *   gets a second WireGuard interface (its own key, its socket in the node's
 *   namespace like the first). WireGuard accepts a packet only from the peer
 *   whose allowed IPs hold its source, per interface: were the direct peer on
 *   the pod's hub interface, the hub would stop delivering that source the
 *   moment it was added, and the pair would lose packets until the other side
 *   switched too. With two interfaces the pod accepts the other pod on both
 *   paths at once, and the path it sends on is a route in the pod.
 * - **Promotion, receiver first.** The node of the pod that sent asks the
 *   other pod's node, over the node mesh (encrypted and authenticated; the
 *   pod directory (pod_directory.ts) listens on the node's own address on the node interface
 *   only), to add the sender as a peer of the receiver's direct interface;
 *   then it adds the receiver as its pod's peer with a route; then the
 *   receiver's node routes the reply path. At every moment both paths
 *   deliver, so no packet is dropped at the switch.
 * - **Idle removal.** A direct peer whose counters have not moved for the
 *   idle time is removed (routes first, then peers, on both sides), so a
 *   pod's peer count follows the pods it talks to.
 * - **Safety.** A direct peer is only ever a pod its own node vouches for,
 *   with exactly its /32 and /128 (within that node's subnets). A DEL
 *   removes the pod from every direct peer it has, on every node, before its
 *   addresses are released; a node that cannot be reached keeps them
 *   reserved (owner `direct:…`) until it confirms or leaves the cluster.
 *   Direct sockets accept packets only from loopback and the nodes' underlay
 *   addresses (nftables).
 */
import { familyOf, hostPrefix, joinHostPort, splitEndpoint } from "../../lib/domain/address.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import { Ip } from "../../lib/ip/link.ts";
import { DIRECT_PORTS_SET, NFT_TABLE, NODE_SETS, setEntries } from "../../lib/ip/nft.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import type { Logger } from "../../lib/log.ts";
import type { NodeStateStore, PodRecord } from "../../lib/store/node_state.ts";
import {
  generateKeyPair,
  type PeerState,
  type Where,
  type WireGuardControl,
} from "../../lib/wireguard/mod.ts";
import { KeyedMutex } from "./mutex.ts";
import { hostCidrs } from "./pod_plan.ts";
import {
  checkAddresses,
  checkEnd,
  checkRequest,
  type DirectEnd,
  DirectoryError,
  podAddressIn,
  postJson,
} from "./pod_directory.ts";

export { type DirectEnd, DirectoryError, serveDirectory } from "./pod_directory.ts";
import { gatewayOf } from "./netsetup.ts";
import type { PodAddresses } from "./pods.ts";
import { ownerOf } from "./pods.ts";

/** `--pod-paths`: direct paths between pods that talk, or every packet through the nodes. */
export type PodPaths = "direct" | "hub";

/** How long a direct peer may stay idle before it is removed (`--direct-idle`). */
export const DIRECT_IDLE_MS = 5 * 60_000;

/** How long the elements of the flow sets live, in seconds. */
export const FLOW_TIMEOUT_S = 10;

/** A flow-set element refreshed within this many seconds is a pair the hub carries now. */
const FLOW_FRESH_S = 2;

/** How often the flow sets are read. */
export const FLOW_POLL_MS = 250;

/** A new direct peer without a handshake after this long: the pair goes back to the hub. */
export const HANDSHAKE_GRACE_MS = 15_000;

/** How long a pair that could not be made direct is left on the hub before another try. */
const RETRY_AFTER_MS = 60_000;

/** How often peers on other nodes are verified and unconfirmed removals retried. */
const VERIFY_MS = 30_000;
const PENDING_RETRY_MS = 5_000;

/** The reservation owner that keeps a deleted pod's addresses until every node confirmed. */
export const QUARANTINE_PREFIX = "direct:";

const SAVED_KEY = "direct";
const PENDING_KEY = "directPending";

/** The name of a pod's direct interface, from its hub interface's creation name (`wgp…`). */
export function directName(wgName: string): string {
  return `wgx${wgName.slice(3)}`;
}

/** A direct peer of a pod. */
interface DirectPeer {
  readonly addresses: readonly string[];
  readonly publicKey: string;
  readonly endpoint: string;
  /** The node of the other pod (this node's name for a neighbour). */
  readonly node: string;
  /** When it was added, or routed here since (ms): the handshake grace counts from it. */
  since: number;
  /** When its counters last moved (ms). */
  active: number;
  bytes: number;
  latestHandshake: number;
}

/** A pod's direct interface. */
interface Device {
  readonly owner: string;
  readonly name: string;
  readonly netns: string;
  readonly publicKey: string;
  readonly port: number;
  readonly addresses: readonly string[];
  readonly peers: Map<string, DirectPeer>;
}

/** A removal another node has not confirmed yet. */
interface Pending {
  readonly node: string;
  /** The deleted pod's addresses. */
  readonly from: readonly string[];
  /** The other pod's first address. */
  readonly to: string;
  /** The reservation that holds `from` meanwhile. */
  readonly owner: string;
}

/** What the node state keeps of direct paths, so that a DEL after a restart reaches every peer. */
type Saved = Record<string, {
  readonly name: string;
  readonly netns: string;
  readonly publicKey: string;
  readonly port: number;
  readonly addresses: readonly string[];
  readonly peers: readonly Omit<DirectPeer, "active" | "bytes" | "latestHandshake">[];
}>;

/** A pod's direct peers as status shows them. */
export interface DirectPeerView {
  readonly addresses: readonly string[];
  readonly node: string;
  readonly endpoint: string;
  readonly publicKey: string;
  /** Seconds since the epoch; 0 = never. */
  readonly latestHandshake: number;
}

/** Counts for metrics. */
export interface DirectCounts {
  peers: number;
  promotions: number;
  removals: number;
  failures: number;
}

export interface DirectOptions {
  readonly runner: Runner;
  readonly wg: WireGuardControl;
  readonly logger: Logger;
  readonly store: NodeStateStore;
  readonly addresses: PodAddresses;
  readonly nodeName: string;
  /** The node interface (its counters tell when the hub carried anything). */
  readonly iface: string;
  readonly subnets: readonly string[];
  readonly mtu: number;
  readonly idleMs: number;
  /** The pod directory's TCP port on every node's gateways. */
  readonly directoryPort: number;
  /** False with `--pod-paths hub`: the directory makes no new direct paths. */
  readonly promote?: boolean;
  /** This node is behind NAT: its pods' pairs with other nodes' pods stay on the hub. */
  readonly nat?: boolean;
  /** The other nodes as the mesh has them; undefined until the mesh has its first snapshot. */
  readonly nodes: () => readonly PeerEntry[] | undefined;
  /** Requests to another node's directory (default: HTTP over the mesh). */
  readonly call?: (url: string, body: unknown) => Promise<unknown>;
}

export class DirectPaths {
  readonly #o: DirectOptions;
  readonly #ip: Ip;
  readonly #lock = new KeyedMutex();
  readonly #devices = new Map<string, Device>();
  /** Pairs (`src dst`) being made direct, or not to try again before a time. */
  readonly #busy = new Set<string>();
  readonly #later = new Map<string, number>();
  #pending: Pending[] = [];
  /** Pods whose DEL is taking them off their peers. */
  readonly #forgetting = new Set<string>();
  #nodesApplied = "";
  /** The node interface's received-packet count at the last read of the flow sets. */
  #lastReceived: number | undefined;
  readonly counts: DirectCounts = { peers: 0, promotions: 0, removals: 0, failures: 0 };
  readonly #call: (url: string, body: unknown) => Promise<unknown>;

  constructor(options: DirectOptions) {
    this.#o = options;
    this.#ip = new Ip(options.runner);
    this.#call = options.call ?? postJson;
    this.#load();
  }

  /** Reservation owners held for removals other nodes have not confirmed. */
  static quarantined(store: NodeStateStore): Set<string> {
    const text = store.meta(PENDING_KEY);
    const pending = text ? JSON.parse(text) as Pending[] : [];
    return new Set(pending.map((p) => p.owner));
  }

  #load(): void {
    const saved = this.#o.store.meta(SAVED_KEY);
    for (const [owner, d] of Object.entries(saved ? JSON.parse(saved) as Saved : {})) {
      const peers = new Map<string, DirectPeer>();
      const now = Date.now();
      for (const p of d.peers) {
        peers.set(p.addresses[0]!, { ...p, active: now, bytes: -1, latestHandshake: 0 });
      }
      this.#devices.set(owner, { owner, ...d, peers });
    }
    const pending = this.#o.store.meta(PENDING_KEY);
    this.#pending = pending ? JSON.parse(pending) as Pending[] : [];
    this.#recount();
  }

  #save(): void {
    const saved: Saved = {};
    for (const d of this.#devices.values()) {
      saved[d.owner] = {
        name: d.name,
        netns: d.netns,
        publicKey: d.publicKey,
        port: d.port,
        addresses: d.addresses,
        peers: [...d.peers.values()].map((p) => ({
          addresses: p.addresses,
          publicKey: p.publicKey,
          endpoint: p.endpoint,
          node: p.node,
          since: p.since,
        })),
      };
    }
    this.#o.store.setMeta(SAVED_KEY, JSON.stringify(saved));
    this.#o.store.setMeta(PENDING_KEY, JSON.stringify(this.#pending));
    this.#recount();
  }

  #recount(): void {
    this.counts.peers = [...this.#devices.values()].reduce((n, d) => n + d.peers.size, 0);
  }

  /** Where a device is reached: in the pod (kernel) or by its creation name (wireguard-go). */
  #at(d: { netns: string }): Where {
    return this.#o.wg.backend === "kernel" ? { netns: d.netns } : {};
  }

  #nodes(): readonly PeerEntry[] {
    return this.#o.nodes() ?? [];
  }

  /** The ready pod of this node holding `address`. */
  #podAt(address: string): PodRecord | undefined {
    return this.#o.store.all().find((r) => r.phase === "ready" && r.addresses.includes(address));
  }

  /** The node whose subnets hold `address`. */
  #nodeFor(address: string): PeerEntry | undefined {
    return this.#nodes().find((n) => n.kind === "node" && podAddressIn(address, n.allowedIps));
  }

  /** The node whose gateway `address` is (a directory request's source). */
  nodeByGateway(address: string): PeerEntry | undefined {
    return this.#nodes().find((n) =>
      n.kind === "node" && n.allowedIps.some((c) => gatewayOf(c) === address)
    );
  }

  #directoryUrl(node: PeerEntry, path: string): string {
    const gws = node.allowedIps.map(gatewayOf);
    const own4 = this.#o.subnets.some((s) => familyOf(gatewayOf(s)) === 4);
    const gw = gws.find((g) => familyOf(g) === (own4 ? 4 : 6)) ?? gws[0]!;
    return `http://${joinHostPort(gw, this.#o.directoryPort)}${path}`;
  }

  #underlay(node: PeerEntry): string {
    const host = node.endpoint && splitEndpoint(node.endpoint)?.host;
    if (!host) throw new DirectoryError(409, `Node ${node.name} has no underlay endpoint`);
    return host;
  }

  /** Deleted pods' addresses held until another node confirms (see {@linkcode forget}). */
  held(): { owner: string; node: string; addresses: readonly string[] }[] {
    return this.#pending.map((p) => ({ owner: p.owner, node: p.node, addresses: p.from }));
  }

  /** The pods with direct peers, each with them, for status. */
  view(): Map<string, DirectPeerView[]> {
    const out = new Map<string, DirectPeerView[]>();
    for (const d of this.#devices.values()) {
      out.set(
        d.owner,
        [...d.peers.values()].map((p) => ({
          addresses: p.addresses,
          node: p.node,
          endpoint: p.endpoint,
          publicKey: p.publicKey,
          latestHandshake: p.latestHandshake,
        })),
      );
    }
    return out;
  }

  /** Runs the flow reader, idle removal, verification and retries until `signal`. */
  run(signal: AbortSignal, everyMs = FLOW_POLL_MS): Promise<void> {
    let lastIdle = 0, lastVerify = Date.now(), lastPending = 0;
    const idleEvery = Math.max(250, Math.min(this.#o.idleMs / 4, 10_000));
    return new Promise((resolve) => {
      let running = false;
      const tick = async () => {
        if (running) return;
        running = true;
        try {
          const now = Date.now();
          await this.#syncNodes();
          // With --pod-paths hub only the upkeep runs (removals, retries).
          if (this.#o.promote !== false) await this.#readFlows();
          if (now - lastIdle >= idleEvery) {
            lastIdle = now;
            await this.sweep();
          }
          if (this.#pending.length > 0 && now - lastPending >= PENDING_RETRY_MS) {
            lastPending = now;
            await this.retryPending();
          }
          if (now - lastVerify >= VERIFY_MS) {
            lastVerify = now;
            await this.verify();
          }
        } catch (err) {
          this.#o.logger.warn("direct paths: {error}", { error: err });
        } finally {
          running = false;
        }
      };
      const timer = setInterval(tick, everyMs);
      signal.addEventListener("abort", () => {
        clearInterval(timer);
        resolve();
      }, { once: true });
    });
  }

  /** The nodes' underlay addresses into the guard sets, when they changed. */
  async #syncNodes(): Promise<void> {
    // Until the mesh is known the sets keep what the last run left in them.
    const nodes = this.#o.nodes();
    if (nodes === undefined) return;
    const hosts = nodes.filter((n) => n.kind === "node").flatMap((n) => {
      const h = n.endpoint && splitEndpoint(n.endpoint)?.host;
      return h ? [h] : [];
    });
    const v4 = [...new Set(hosts.filter((h) => familyOf(h) === 4))].sort();
    const v6 = [...new Set(hosts.filter((h) => familyOf(h) === 6))].sort();
    const key = `${v4.join()}|${v6.join()}`;
    if (key === this.#nodesApplied) return;
    const lines = [`flush set inet ${NFT_TABLE} ${NODE_SETS[4]}`];
    lines.push(`flush set inet ${NFT_TABLE} ${NODE_SETS[6]}`);
    if (v4.length) lines.push(`add element inet ${NFT_TABLE} ${NODE_SETS[4]} { ${v4.join(", ")} }`);
    if (v6.length) lines.push(`add element inet ${NFT_TABLE} ${NODE_SETS[6]} { ${v6.join(", ")} }`);
    await this.#o.runner.run(["nft", "-f", "-"], { stdin: lines.join("\n") + "\n" });
    this.#nodesApplied = key;
  }

  async #readFlows(): Promise<void> {
    // Nothing to promote without a pod here, nor while the node interface
    // has received nothing since the last read (a pair on the hub passes
    // through it; a direct one does not): reading its counter is a file
    // read, listing the sets a process.
    // The node's ready pods by address, read once per poll.
    const local = new Map(
      this.#o.store.all().filter((r) => r.phase === "ready").flatMap((r) =>
        r.addresses.map((a) => [a, r] as const)
      ),
    );
    if (local.size === 0) return;
    const received = await receivedPackets(this.#o.iface);
    if (received !== undefined && received === this.#lastReceived) return;
    this.#lastReceived = received;
    const r = await this.#o.runner.exec(["nft", "-j", "list", "table", "inet", NFT_TABLE]);
    if (r.code !== 0) return;
    const pairs: [string, string][] = [];
    for (const e of setEntries(r.stdout)) {
      // Only pairs the hub carried lately: an element lives on for the
      // set's timeout after its last packet (a pair made direct, or ended).
      const fresh = e.timeout === undefined || e.expires === undefined ||
        e.timeout - e.expires <= FLOW_FRESH_S;
      if (Array.isArray(e.value) && e.value.length === 2 && fresh) {
        pairs.push([String(e.value[0]), String(e.value[1])]);
      }
    }
    const now = Date.now();
    for (const [src, dst] of pairs) {
      const pair = `${src} ${dst}`;
      if (this.#busy.has(pair) || (this.#later.get(pair) ?? 0) > now) continue;
      const pod = local.get(src);
      if (pod === undefined) continue;
      const d = this.#devices.get(ownerOf(pod.containerId, pod.ifname));
      if (d && [...d.peers.values()].some((p) => p.addresses.includes(dst))) continue;
      this.#busy.add(pair);
      this.promote(pod, dst).then((made) => {
        // No pod there (a node's own address, a workload): not tried again for a while.
        if (!made) this.#later.set(pair, Date.now() + RETRY_AFTER_MS);
      }, (err) => {
        this.counts.failures++;
        this.#later.set(pair, Date.now() + RETRY_AFTER_MS);
        this.#o.logger.warn("cannot make {src} → {dst} direct; it stays on the hub: {error}", {
          src,
          dst,
          error: err,
        });
      }).finally(() => this.#busy.delete(pair));
    }
    for (const [pair, until] of this.#later) if (until <= now) this.#later.delete(pair);
  }

  /** Runs `fn` holding the locks of these pods (in one order, so two never wait on each other). */
  #locked<T>(owners: readonly string[], fn: () => Promise<T>): Promise<T> {
    const sorted = [...new Set(owners)].sort();
    const step = (i: number): Promise<T> =>
      i === sorted.length ? fn() : this.#lock.run(sorted[i]!, () => step(i + 1));
    return step(0);
  }

  /** Makes `pod` (on this node) and the pod at `dst` direct peers; false when `dst` is no pod. */
  async promote(pod: PodRecord, dst: string): Promise<boolean> {
    const neighbour = this.#podAt(dst);
    const owner = ownerOf(pod.containerId, pod.ifname);
    if (neighbour !== undefined) {
      const other = ownerOf(neighbour.containerId, neighbour.ifname);
      if (other === owner) return false;
      return await this.#locked([owner, other], async () => {
        const a = this.#current(pod), b = this.#current(neighbour);
        if (a === undefined || b === undefined) return false;
        const [da, db] = [await this.#device(a), await this.#device(b)];
        if (da.peers.has(b.addresses[0]!) && db.peers.has(a.addresses[0]!)) return true;
        const self = this.#o.nodeName;
        await this.#addPeer(db, { ...endOf(da), endpoint: `127.0.0.1:${da.port}`, node: self });
        await this.#addPeer(da, { ...endOf(db), endpoint: `127.0.0.1:${db.port}`, node: self });
        await this.#route(da, b.addresses);
        await this.#route(db, a.addresses);
        this.#promoted(a, b.addresses, self);
        return true;
      });
    }
    const node = this.#nodeFor(dst);
    // Pods' direct sockets are not reachable through a NAT: such pairs stay on the hub.
    if (node === undefined || node.nat || this.#o.nat) return false;
    // No lock is held while another node is asked: both nodes may be
    // promoting the same pair at once, each waiting on the other.
    const a = this.#current(pod);
    if (a === undefined || this.#forgetting.has(owner)) return false;
    const da = await this.#locked([owner], () => this.#device(a));
    if ([...da.peers.values()].some((p) => p.addresses.includes(dst))) return true;
    await this.#syncNodes();
    let end: DirectEnd;
    try {
      end = checkEnd(
        await this.#call(this.#directoryUrl(node, "/v1/direct/prepare"), {
          from: endOf(da),
          to: dst,
        }),
      );
    } catch (err) {
      if (err instanceof DirectoryError && err.status === 404) {
        // Not a pod there (a workload, a client, gone): the hub it is.
        this.#later.set(`${a.addresses[0]} ${dst}`, Date.now() + RETRY_AFTER_MS);
        return false;
      }
      throw err;
    }
    if (
      !end.addresses.includes(dst) ||
      !end.addresses.every((x) => podAddressIn(x, node.allowedIps))
    ) {
      throw new Error(`Node ${node.name} answered for ${dst} with ${end.addresses.join(", ")}`);
    }
    const endpoint = joinHostPort(this.#underlay(node), end.port);
    const added = await this.#locked([owner], async () => {
      // Deleted meanwhile: the other side's prepared peer is found gone by its verification.
      if (this.#devices.get(owner) !== da || this.#forgetting.has(owner)) return false;
      await this.#addPeer(da, { ...end, endpoint, node: node.name });
      await this.#route(da, end.addresses);
      return true;
    });
    if (!added) return false;
    await this.#call(this.#directoryUrl(node, "/v1/direct/route"), {
      from: a.addresses,
      to: dst,
    });
    this.#promoted(a, end.addresses, node.name);
    return true;
  }

  #promoted(a: PodRecord, to: readonly string[], node: string): void {
    this.counts.promotions++;
    this.#o.logger.info("direct path {from} ↔ {to} ({node})", {
      from: a.addresses,
      to,
      node,
    });
  }

  /** The record of a pod as the store has it now (ready), or undefined when it is gone. */
  #current(r: PodRecord): PodRecord | undefined {
    const now = this.#o.store.get(r.containerId, r.ifname);
    return now?.phase === "ready" && now.publicKey === r.publicKey ? now : undefined;
  }

  /** The pod's direct interface, created (keyed, moved into the pod, up) when it has none. */
  async #device(r: PodRecord): Promise<Device> {
    const owner = ownerOf(r.containerId, r.ifname);
    const known = this.#devices.get(owner);
    if (known) return known;
    const name = directName(r.wgName);
    const { wg } = this.#o;
    // A left-over of an earlier attempt goes first.
    await this.#deleteLink({ name, netns: r.netns });
    await wg.create(name);
    try {
      const keys = await generateKeyPair();
      await wg.configure(name, { privateKey: keys.privateKey, listenPort: 0 });
      const moved = await this.#ip.moveLink(name, r.netns, name, this.#o.mtu);
      if (moved.code !== 0) {
        throw new Error(`Cannot move ${name} into ${r.netns}: ${moved.stderr.trim()}`);
      }
      const up = await this.#ip.apply(name, [{ op: "up" }], { netns: r.netns });
      if (up.code !== 0) throw new Error(`Cannot bring ${name} up: ${up.stderr.trim()}`);
      const at = this.#at({ netns: r.netns });
      let port = 0;
      for (let wait = 5, until = Date.now() + 2000; port === 0 && Date.now() < until; wait *= 2) {
        port = await wg.listenPort(name, at).catch(() => 0);
        if (port === 0) await new Promise((res) => setTimeout(res, Math.min(wait, 100)));
      }
      if (port === 0) throw new Error(`${name} listens on no port`);
      await this.#o.runner.run([
        "nft",
        "add",
        "element",
        "inet",
        NFT_TABLE,
        DIRECT_PORTS_SET,
        `{ ${port} }`,
      ]);
      const d: Device = {
        owner,
        name,
        netns: r.netns,
        publicKey: keys.publicKey,
        port,
        addresses: r.addresses,
        peers: new Map(),
      };
      this.#devices.set(owner, d);
      this.#save();
      return d;
    } catch (err) {
      await this.#deleteLink({ name, netns: r.netns });
      throw err;
    }
  }

  /** Deletes a pod's direct interface and everything kept of it. */
  async #drop(d: Device): Promise<void> {
    this.#devices.delete(d.owner);
    await this.#deleteLink(d);
    await this.#unguard(d.port);
    this.#save();
  }

  /** Takes a direct socket's port out of the guard set. */
  async #unguard(port: number): Promise<void> {
    await this.#o.runner.exec([
      "nft",
      "delete",
      "element",
      "inet",
      NFT_TABLE,
      DIRECT_PORTS_SET,
      `{ ${port} }`,
    ]);
  }

  async #deleteLink(d: { name: string; netns: string }): Promise<void> {
    await this.#ip.deleteLink(d.name, { netns: d.netns }).catch(() => {});
    await this.#o.wg.delete(d.name).catch(() => {});
  }

  async #addPeer(d: Device, p: DirectEnd & { endpoint: string; node: string }): Promise<void> {
    // Already there (both nodes promoting the pair at once): left alone, since
    // setting a peer's allowed IPs again replaces them, and a packet crossing
    // that instant finds no peer.
    const same = d.peers.get(p.addresses[0]!);
    if (
      same?.publicKey === p.publicKey && same.addresses.join() === [...p.addresses].join()
    ) {
      return;
    }
    // Another key on the same addresses (the pod there was replaced): that peer goes.
    const stale = [...d.peers.values()].filter((q) =>
      q.publicKey !== p.publicKey && q.addresses.some((x) => p.addresses.includes(x))
    );
    for (const q of stale) await this.#removePeer(d, q);
    await this.#o.wg.configure(d.name, {
      peers: [{ publicKey: p.publicKey, endpoint: p.endpoint, allowedIps: hostCidrs(p.addresses) }],
    }, this.#at(d));
    const now = Date.now();
    d.peers.set(p.addresses[0]!, {
      addresses: [...p.addresses],
      publicKey: p.publicKey,
      endpoint: p.endpoint,
      node: p.node,
      since: now,
      active: now,
      bytes: -1,
      latestHandshake: 0,
    });
    this.#save();
  }

  /** Routes `to` through the pod's direct interface, from the pod's own address of each family. */
  async #route(d: Device, to: readonly string[]): Promise<void> {
    const steps = to.flatMap((dst) => {
      const src = d.addresses.find((a) => familyOf(a) === familyOf(dst));
      return src === undefined
        ? []
        : [{ op: "route" as const, dst: hostPrefix(dst), src, replace: true }];
    });
    const r = await this.#ip.apply(d.name, steps, { netns: d.netns });
    if (r.code !== 0) {
      throw new Error(`Cannot route ${to.join(", ")} via ${d.name}: ${r.stderr.trim()}`);
    }
    // The pod sends on it from now on: the handshake is due from here.
    const p = d.peers.get(to[0]!);
    if (p !== undefined) p.since = Date.now();
  }

  async #unroute(d: Device, to: readonly string[]): Promise<void> {
    for (const dst of to) {
      await this.#ip.apply(d.name, [{ op: "unroute", dst: hostPrefix(dst) }], { netns: d.netns });
    }
  }

  /** Takes a peer off a device: its route first, then the peer. */
  async #removePeer(d: Device, p: DirectPeer): Promise<void> {
    await this.#unroute(d, p.addresses);
    const at = this.#at(d);
    await this.#o.wg.configure(d.name, { peers: [{ publicKey: p.publicKey, remove: true }] }, at)
      .catch(async (err) => {
        // Gone with its interface (the pod's namespace went) is removed; else it stays recorded.
        if (await this.#o.wg.exists(d.name, at)) throw err;
      });
    d.peers.delete(p.addresses[0]!);
    this.counts.removals++;
    this.#save();
  }

  // ---- The pod directory: requests from other nodes (already authenticated by source). ----

  /** POST /v1/direct/prepare: the sender `from` (on `node`) becomes a peer of our pod at `to`. */
  async prepare(node: PeerEntry, body: unknown): Promise<DirectEnd> {
    const { from, to } = checkRequest(body);
    const end = checkEnd(from);
    checkAddresses(end.addresses, node);
    if (this.#o.promote === false) {
      throw new DirectoryError(404, `${this.#o.nodeName} keeps its pods on the hub path`);
    }
    const pod = this.#podAt(to);
    if (pod === undefined) throw new DirectoryError(404, `No pod of ${this.#o.nodeName} has ${to}`);
    const owner = ownerOf(pod.containerId, pod.ifname);
    return await this.#locked([owner], async () => {
      const b = this.#current(pod);
      if (b === undefined || this.#forgetting.has(owner)) {
        throw new DirectoryError(404, `The pod at ${to} is gone`);
      }
      await this.#syncNodes();
      const db = await this.#device(b);
      const endpoint = joinHostPort(this.#underlay(node), end.port);
      await this.#addPeer(db, { ...end, endpoint, node: node.name });
      return endOf(db);
    });
  }

  /** POST /v1/direct/route: the reply path of a prepared pair goes direct. */
  async routeRequest(node: PeerEntry, body: unknown): Promise<void> {
    const { from, to } = checkRequest(body);
    const addresses = checkAddresses(from, node);
    const d = this.#deviceAt(to);
    await this.#locked([d?.owner ?? to], async () => {
      const p = d && [...d.peers.values()].find((q) => q.addresses[0] === addresses[0]);
      if (d === undefined || p === undefined || p.node !== node.name) {
        throw new DirectoryError(404, `No direct peer ${addresses[0]} at ${to}`);
      }
      await this.#route(d, p.addresses);
    });
  }

  /** POST /v1/direct/remove: the pair `from` (on `node`) ↔ `to` is no longer direct. Idempotent. */
  async removeRequest(node: PeerEntry, body: unknown): Promise<void> {
    const { from, to } = checkRequest(body);
    const addresses = checkAddresses(from, node);
    const d = this.#deviceAt(to);
    if (d === undefined) return;
    await this.#locked([d.owner], async () => {
      const p = [...d.peers.values()].find((q) => q.addresses[0] === addresses[0]);
      if (p !== undefined && p.node === node.name) await this.#removePeer(d, p);
    });
  }

  /** POST /v1/direct/lookup: our pod at `to`'s direct end (a peer elsewhere verifying it). */
  lookup(node: PeerEntry, body: unknown): DirectEnd {
    const { from, to } = checkRequest(body);
    checkAddresses(from, node);
    const d = this.#deviceAt(to);
    if (d === undefined || this.#podAt(to) === undefined || this.#o.promote === false) {
      throw new DirectoryError(
        404,
        `No pod of ${this.#o.nodeName} at ${to} has a direct interface`,
      );
    }
    return endOf(d);
  }

  #deviceAt(address: string): Device | undefined {
    return [...this.#devices.values()].find((d) => d.addresses.includes(address));
  }

  // ---- Upkeep ----

  /**
   * `--pod-paths hub` on a node that had direct paths: once the mesh is
   * known (`ready`), every one of them ends, on both sides.
   */
  async endAll(ready: () => boolean, signal: AbortSignal): Promise<void> {
    if (this.counts.peers === 0) return;
    while (!ready() && !signal.aborted) await new Promise((r) => setTimeout(r, 500));
    for (const d of [...this.#devices.values()]) {
      for (const p of [...d.peers.values()]) {
        await this.demote(d.owner, p.addresses[0]!).catch((err) =>
          this.#o.logger.warn("cannot end direct path {from} ↔ {to}: {error}", {
            from: d.addresses,
            to: p.addresses,
            error: err,
          })
        );
      }
    }
  }

  /**
   * Reads every direct interface: peers idle for the idle time are removed
   * on both sides, peers that never completed a handshake go back to the
   * hub, and peers the kernel has that the state lacks are adopted.
   */
  async sweep(): Promise<void> {
    const now = Date.now();
    for (const d of [...this.#devices.values()]) {
      let state;
      try {
        state = await this.#o.wg.show(d.name, this.#at(d));
      } catch {
        continue;
      }
      const byKey = new Map<string, PeerState>(state.peers.map((p) => [p.publicKey, p]));
      for (const p of [...d.peers.values()]) {
        const s = byKey.get(p.publicKey);
        if (s === undefined) continue;
        const bytes = s.rxBytes + s.txBytes;
        if (bytes !== p.bytes) {
          p.bytes = bytes;
          p.active = now;
        }
        p.latestHandshake = s.latestHandshake;
        const idle = now - p.active >= this.#o.idleMs;
        // Sent on it (a handshake initiation at least) and never answered. A
        // pair promoted as its flow ended has sent nothing: it idles out instead.
        const neverUp = s.latestHandshake === 0 && s.txBytes > 0 &&
          now - p.since >= HANDSHAKE_GRACE_MS;
        if (idle || neverUp) {
          if (neverUp) this.#later.set(`${d.addresses[0]} ${p.addresses[0]}`, now + RETRY_AFTER_MS);
          await this.demote(d.owner, p.addresses[0]!).catch((err) =>
            this.#o.logger.warn("cannot remove direct peer {peer} of {pod}: {error}", {
              peer: p.addresses,
              pod: d.owner,
              error: err,
            })
          );
        }
      }
    }
  }

  /** Ends the direct path between our pod `owner` and the pod at `to`, on both sides. */
  async demote(owner: string, to: string): Promise<void> {
    const d = this.#devices.get(owner);
    const p = d?.peers.get(to);
    if (d === undefined || p === undefined) return;
    const neighbour = p.node === this.#o.nodeName ? this.#deviceAt(to) : undefined;
    if (neighbour !== undefined) {
      await this.#locked([owner, neighbour.owner], async () => {
        if (d.peers.get(to) !== p) return;
        await this.#unroute(d, p.addresses);
        const back = neighbour.peers.get(d.addresses[0]!);
        if (back) await this.#removePeer(neighbour, back);
        await this.#removePeer(d, p);
      });
    } else {
      // Our route goes first, so that our pod sends on the hub while the
      // other side still accepts on the direct path; no lock is held while
      // the other node is asked.
      await this.#locked([owner], () => this.#unroute(d, p.addresses));
      const node = this.#nodes().find((n) => n.kind === "node" && n.name === p.node);
      if (node) {
        await this.#call(this.#directoryUrl(node, "/v1/direct/remove"), {
          from: d.addresses,
          to,
        }).catch((err) =>
          this.#o.logger.warn("node {node} did not confirm the end of {from} ↔ {to}: {error}", {
            node: p.node,
            from: d.addresses,
            to,
            error: err,
          })
        );
      }
      await this.#locked([owner], async () => {
        if (d.peers.get(to) === p) await this.#removePeer(d, p);
      });
    }
    this.#o.logger.info("direct path {from} ↔ {to} ended", { from: d.addresses, to: p.addresses });
  }

  /**
   * Before a pod's addresses are released (DEL, rollback, GC): removes the
   * pod from every direct peer it has, on every node, and deletes its direct
   * interface. False when some node did not confirm: the caller keeps the
   * addresses reserved under {@linkcode quarantineOwner} until it does.
   */
  async forget(r: PodRecord): Promise<boolean> {
    const owner = ownerOf(r.containerId, r.ifname);
    const d = this.#devices.get(owner);
    if (d === undefined) return true;
    const neighbours = [...d.peers.values()].filter((p) => p.node === this.#o.nodeName)
      .map((p) => this.#deviceAt(p.addresses[0]!)).filter((x): x is Device => x !== undefined);
    let confirmed = true;
    // From here on no new peer is added to it (promotions and prepares check).
    this.#forgetting.add(owner);
    try {
      await this.#locked([owner, ...neighbours.map((n) => n.owner)], async () => {
        for (const p of [...d.peers.values()]) {
          if (p.node !== this.#o.nodeName) continue;
          const n = this.#deviceAt(p.addresses[0]!);
          const back = n?.peers.get(d.addresses[0]!);
          if (n && back) await this.#removePeer(n, back);
          d.peers.delete(p.addresses[0]!);
        }
      });
      for (const p of [...d.peers.values()]) {
        const node = this.#nodes().find((x) => x.kind === "node" && x.name === p.node);
        // A node the mesh no longer has left, and its pods with it.
        if (node === undefined && this.#o.nodes() !== undefined) continue;
        try {
          if (node === undefined) throw new Error("the mesh is not known yet");
          await this.#call(this.#directoryUrl(node, "/v1/direct/remove"), {
            from: d.addresses,
            to: p.addresses[0],
          });
        } catch (err) {
          confirmed = false;
          this.#pending.push({
            node: p.node,
            from: d.addresses,
            to: p.addresses[0]!,
            owner: quarantineOwner(owner),
          });
          this.#o.logger.warn(
            "node {node} did not confirm that {from} is no longer a peer of {to}: the addresses stay reserved until it does ({error})",
            { node: p.node, from: d.addresses, to: p.addresses, error: err },
          );
        }
      }
      await this.#locked([owner], async () => {
        d.peers.clear();
        await this.#drop(d);
      });
    } finally {
      this.#forgetting.delete(owner);
    }
    return confirmed;
  }

  /** Retries unconfirmed removals; releases a quarantine once every node confirmed or left. */
  async retryPending(): Promise<void> {
    // A node missing from a mesh not known yet has not left.
    if (this.#o.nodes() === undefined) return;
    const left: Pending[] = [];
    for (const p of this.#pending) {
      const node = this.#nodes().find((x) => x.kind === "node" && x.name === p.node);
      if (node === undefined) continue;
      try {
        await this.#call(this.#directoryUrl(node, "/v1/direct/remove"), { from: p.from, to: p.to });
      } catch {
        left.push(p);
      }
    }
    const held = new Set(left.map((p) => p.owner));
    const done = new Set(this.#pending.map((p) => p.owner).filter((o) => !held.has(o)));
    this.#pending = left;
    this.#o.store.transaction(() => {
      for (const owner of done) this.#o.addresses.release(owner);
      this.#save();
    });
    for (const owner of done) {
      this.#o.logger.info("every node confirmed: the addresses held by {owner} are free", {
        owner,
      });
    }
  }

  /**
   * Peers on other nodes are asked for again: one whose pod is gone, has
   * another key, or whose node left the cluster, is removed here.
   */
  async verify(): Promise<void> {
    if (this.#o.nodes() === undefined) return;
    for (const d of [...this.#devices.values()]) {
      for (const p of [...d.peers.values()]) {
        if (p.node === this.#o.nodeName) continue;
        const node = this.#nodes().find((x) => x.kind === "node" && x.name === p.node);
        let gone = node === undefined;
        if (node !== undefined) {
          try {
            const end = checkEnd(
              await this.#call(this.#directoryUrl(node, "/v1/direct/lookup"), {
                from: d.addresses,
                to: p.addresses[0],
              }),
            );
            gone = end.publicKey !== p.publicKey;
          } catch (err) {
            gone = err instanceof DirectoryError && err.status === 404;
          }
        }
        if (gone) {
          await this.#locked([d.owner], () => this.#removePeer(d, p));
          this.#o.logger.info("direct peer {peer} of {pod} is gone there: removed", {
            peer: p.addresses,
            pod: d.owner,
          });
        }
      }
    }
  }

  /**
   * CHECK of a pod: its direct interface and peers are brought in line with
   * what the node recorded. Peers the interface has that were never made
   * here are removed; recorded peers the interface lost, or a lost
   * interface, end on both sides (the pair falls back to the hub, which
   * always works). Nothing here fails a CHECK: the hub path is the pod's
   * guaranteed one, and the plan check covers it.
   */
  async check(r: PodRecord): Promise<void> {
    const owner = ownerOf(r.containerId, r.ifname);
    const d = this.#devices.get(owner);
    if (d === undefined) return;
    const state = await this.#o.wg.show(d.name, this.#at(d)).catch(() => undefined);
    const lost = state === undefined || state.publicKey !== d.publicKey;
    const inKernel = new Map((state?.peers ?? []).map((p) => [p.publicKey, p]));
    for (const p of [...d.peers.values()]) {
      const k = inKernel.get(p.publicKey);
      const exact = k !== undefined &&
        [...k.allowedIps].sort().join() === hostCidrs(p.addresses).sort().join();
      if (lost || !exact) {
        this.#o.logger.warn("direct peer {peer} of {pod} is not as recorded: ending it", {
          peer: p.addresses,
          pod: owner,
        });
        await this.demote(owner, p.addresses[0]!);
      }
    }
    if (lost) {
      await this.#locked([owner], async () => {
        if (this.#devices.get(owner) === d) await this.#drop(d);
      });
      return;
    }
    const known = new Set([...d.peers.values()].map((p) => p.publicKey));
    const strangers = [...inKernel.keys()].filter((k) => !known.has(k));
    if (strangers.length > 0) {
      await this.#locked([owner], () =>
        this.#o.wg.configure(d.name, {
          peers: strangers.map((publicKey) => ({ publicKey, remove: true })),
        }, this.#at(d)));
      this.#o.logger.warn("removed {n} direct peer(s) of {pod} this node never made", {
        n: strangers.length,
        pod: owner,
      });
    }
  }

  /**
   * After a restart: keeps the direct interfaces of pods that are still
   * there (their peers as the kernel has them), drops the state of the rest.
   * The kernel never loses a working path on a restart.
   */
  async reconcile(): Promise<{ kept: number; dropped: number }> {
    let kept = 0, dropped = 0;
    for (const d of [...this.#devices.values()]) {
      const [cid, ifname] = splitOwner(d.owner);
      const r = this.#o.store.get(cid, ifname);
      const state = r?.phase === "ready"
        ? await this.#o.wg.show(d.name, this.#at(d)).catch(() => undefined)
        : undefined;
      if (r === undefined || state === undefined || state.publicKey !== d.publicKey) {
        // The pod record is gone (its DEL reached the peers) or the interface is.
        if (r !== undefined) await this.#deleteLink(d);
        await this.#unguard(d.port);
        this.#devices.delete(d.owner);
        dropped++;
        continue;
      }
      const inKernel = new Set(state.peers.map((p) => p.publicKey));
      for (const p of [...d.peers.values()]) {
        if (!inKernel.has(p.publicKey)) d.peers.delete(p.addresses[0]!);
      }
      kept++;
    }
    this.#save();
    return { kept, dropped };
  }
}

/** Packets an interface of this namespace has received (`/proc/self/net/dev`), if it is there. */
export async function receivedPackets(iface: string): Promise<number | undefined> {
  const text = await Deno.readTextFile("/proc/self/net/dev").catch(() => "");
  for (const line of text.split("\n")) {
    const [name, counters] = line.split(":");
    if (name?.trim() === iface && counters !== undefined) {
      // bytes, packets, … (received first).
      return Number(counters.trim().split(/\s+/)[1]);
    }
  }
  return undefined;
}

/** The reservation owner that holds a deleted pod's addresses (see {@linkcode DirectPaths.forget}). */
export function quarantineOwner(owner: string): string {
  return `${QUARANTINE_PREFIX}${owner}`;
}

function splitOwner(owner: string): [string, string] {
  const i = owner.lastIndexOf("/");
  return [owner.slice(0, i), owner.slice(i + 1)];
}

function endOf(d: Device): DirectEnd {
  return { addresses: d.addresses, publicKey: d.publicKey, port: d.port };
}
