/**
 * Pods on this node: each gets its own WireGuard interface and key, created
 * in the node namespace (so its UDP socket stays here), configured with one
 * peer (the node), moved into the pod's namespace and renamed; the node
 * interface gets the pod as a peer with exactly its /32 and /128.
 *
 * Every operation on one (container id, ifname) is serialised; a record is
 * written before anything is created, so a restart can finish or undo it.
 */
import type { Runner } from "../../lib/ip/runner.ts";
import type { Logger } from "../../lib/log.ts";
import { generateKeyPair, type WireGuardControl } from "../../lib/wireguard/mod.ts";
import type { NodeStateStore, PodRecord } from "../../lib/store/node_state.ts";
import type { Attachment, CniResult, CniRoute, GcResponse } from "../../lib/api/local_types.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import { KeyedMutex } from "./mutex.ts";

/** Address reservations of the node's subnets (one address per family per owner). */
export interface PodAddresses {
  /** The owner's addresses (IPv4 first), allocating them if needed. Atomic. */
  allocate(owner: string): string[];
  release(owner: string): void;
  get(owner: string): string[] | undefined;
  /** Owners holding a reservation. */
  owners(): string[];
  /** Free addresses left in the smallest family. */
  free(): bigint;
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
}

/** A pod's request as the local API passes it on. */
export interface PodRequest {
  readonly containerId: string;
  readonly ifname: string;
  readonly netns: string;
  readonly prevResult?: CniResult;
  readonly cniVersion: string;
}

const encoder = new TextEncoder();

/** Keep-alive interval of a pod's peer (the node), in seconds. */
export const POD_KEEPALIVE_S = 25;

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
export function ownerOf(containerId: string, ifname: string): string {
  return `${containerId}/${ifname}`;
}

export class PodManager {
  readonly #o: PodManagerOptions;
  readonly #lock = new KeyedMutex();
  readonly #tag: string;

  constructor(options: PodManagerOptions) {
    this.#o = options;
    this.#tag = options.nodeInterface;
  }

  /** The public keys of every pod this node knows, for the mesh to leave alone. */
  podKeys(): Set<string> {
    return new Set(this.#o.store.all().map((p) => p.publicKey));
  }

  async add(req: PodRequest): Promise<CniResult> {
    return await this.#lock.run(ownerOf(req.containerId, req.ifname), () => this.#add(req));
  }

  async #add(req: PodRequest): Promise<CniResult> {
    const { store, wg, runner } = this.#o;
    const existing = store.get(req.containerId, req.ifname);
    if (existing) {
      throw new CniError(
        ERR.internal,
        `Cannot add ${req.containerId}/${req.ifname}: it is already attached (addresses ${
          existing.addresses.join(", ")
        }); delete it first`,
      );
    }
    try {
      await Deno.stat(req.netns);
    } catch {
      throw new CniError(
        ERR.internal,
        `Cannot add ${req.containerId}/${req.ifname}: network namespace ${req.netns} does not exist`,
      );
    }
    this.#t0 = performance.now();
    const owner = ownerOf(req.containerId, req.ifname);
    const wgName = await podWgName(this.#tag, req.containerId, req.ifname);
    const keys = await generateKeyPair();
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
      };
      store.put(r);
      return r;
    });
    const nodePeer = {
      publicKey: this.#o.nodePublicKey,
      endpoint: `127.0.0.1:${this.#o.nodeListenPort}`,
      allowedIps: ["0.0.0.0/0", "::/0"],
    };
    try {
      this.#step("create");
      await wg.create(wgName);
      this.#step("configure");
      await wg.configure(wgName, {
        privateKey: keys.privateKey,
        listenPort: 0,
        peers: [nodePeer],
      });
      const port = (await wg.show(wgName)).listenPort;
      store.put({ ...record, listenPort: port });
      // The node knows the pod before its interface comes up: the first
      // packet starts a handshake, and one the node ignores is retried only
      // after five seconds.
      this.#step("peer");
      await wg.setPeer(this.#o.nodeInterface, {
        publicKey: keys.publicKey,
        endpoint: `127.0.0.1:${port}`,
        allowedIps: hostCidrs(record.addresses),
      });
      this.#step("move");
      await runner.run(["ip", "link", "set", wgName, "netns", req.netns]);
      this.#step("inside");
      const [v4, v6] = splitFamilies(record.addresses);
      const batch = [
        `link set ${wgName} name ${req.ifname}`,
        `link set ${req.ifname} mtu ${this.#o.mtu} addrgenmode none`,
        ...(v4 ? [`addr add ${v4}/32 dev ${req.ifname}`] : []),
        ...(v6 ? [`addr add ${v6}/128 dev ${req.ifname} nodad`] : []),
        `link set ${req.ifname} up`,
        ...(v4 ? [`route add 0.0.0.0/0 dev ${req.ifname}`] : []),
        ...(v6 ? [`route add ::/0 dev ${req.ifname}`] : []),
      ];
      const inside = await runner.exec(["ip", "-batch", "-"], {
        netns: req.netns,
        stdin: batch.join("\n") + "\n",
      });
      if (inside.code !== 0) {
        const exists = /File exists/.test(inside.stderr);
        throw new CniError(
          ERR.internal,
          exists
            ? `Cannot add ${req.containerId}: an interface named ${req.ifname} already exists in ${req.netns}`
            : `Cannot set up ${req.ifname} in ${req.netns}: ${inside.stderr.trim()}`,
        );
      }
      // Up inside the pod: a keep-alive starts the pod's handshake with the
      // node at once (and keeps the session warm). A handshake the node sent
      // while the interface was being moved, its socket closed meanwhile,
      // would otherwise be retried only after five seconds.
      // (wireguard-go answers on the control socket of the creation name;
      // a kernel interface is reached by its new name in the pod.)
      const keepalive = { ...nodePeer, persistentKeepalive: POD_KEEPALIVE_S };
      if (wg.backend === "kernel") await wg.setPeer(req.ifname, keepalive, { netns: req.netns });
      else await wg.setPeer(wgName, keepalive);
      this.#step("ready");
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

  #t0 = 0;
  #step(name: string) {
    const now = performance.now();
    this.#o.logger.debug("ADD step {name} (+{ms} ms)", { name, ms: Math.round(now - this.#t0) });
    this.#t0 = now;
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
    const [v4, v6] = splitFamilies(record.addresses);
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
      const record = this.#o.store.get(req.containerId, req.ifname);
      if (!record) {
        // Never known, or already deleted; a stray reservation is still released.
        this.#o.addresses.release(ownerOf(req.containerId, req.ifname));
        return;
      }
      await this.#undo(record);
      this.#o.logger.info("pod {pod} detached", { pod: ownerOf(req.containerId, req.ifname) });
    });
  }

  /** Removes everything a record stands for; tolerates parts already gone. */
  async #undo(record: PodRecord): Promise<void> {
    const { wg, runner, store } = this.#o;
    await wg.removePeer(this.#o.nodeInterface, record.publicKey).catch((err) =>
      this.#o.logger.warn("cannot remove peer of {pod}: {error}", {
        pod: ownerOf(record.containerId, record.ifname),
        error: err,
      })
    );
    if (await pathExists(record.netns)) {
      // Inside the pod, under either name; deleting the TUN ends its wireguard-go.
      for (const name of [record.ifname, record.wgName]) {
        const link = await runner.exec(["ip", "-d", "link", "show", name], { netns: record.netns });
        if (link.code === 0 && /tun|wireguard/.test(link.stdout)) {
          await runner.exec(["ip", "link", "del", name], { netns: record.netns });
        }
      }
    }
    // Never moved (a failure before the move): it is still here.
    await wg.delete(record.wgName).catch(() => {});
    store.transaction(() => {
      this.#o.addresses.release(ownerOf(record.containerId, record.ifname));
      store.delete(record.containerId, record.ifname);
    });
  }

  /** Errors as CniError when anything wgcni made for the pod is missing or different. */
  async check(req: PodRequest): Promise<void> {
    await this.#lock.run(ownerOf(req.containerId, req.ifname), async () => {
      const { runner, wg, store } = this.#o;
      const record = store.get(req.containerId, req.ifname);
      const what = `${req.containerId}/${req.ifname}`;
      if (!record || record.phase !== "ready") {
        throw new CniError(ERR.unknownContainer, `Cannot check ${what}: no attachment is known`);
      }
      const reserved = this.#o.addresses.get(ownerOf(req.containerId, req.ifname));
      if (!reserved || reserved.join() !== record.addresses.join()) {
        throw new CniError(
          ERR.internal,
          `Check of ${what} failed: its address reservation is gone`,
        );
      }
      const addrOut = await runner.exec(["ip", "-j", "addr", "show", "dev", req.ifname], {
        netns: req.netns,
      });
      if (addrOut.code !== 0) {
        throw new CniError(
          ERR.internal,
          `Check of ${what} failed: interface ${req.ifname} is missing in ${req.netns}`,
        );
      }
      const have = new Set(
        (JSON.parse(addrOut.stdout) as { addr_info?: { local: string; prefixlen: number }[] }[])
          .flatMap((l) => l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`),
      );
      const want = hostCidrs(record.addresses);
      for (const ip of req.prevResult?.ips ?? []) {
        const iface = req.prevResult?.interfaces?.[ip.interface ?? -1];
        if (iface?.name === req.ifname && !want.includes(ip.address)) want.push(ip.address);
      }
      for (const a of want) {
        if (!have.has(a)) {
          throw new CniError(ERR.internal, `Check of ${what} failed: address ${a} is missing`);
        }
      }
      for (const [fam, dst] of [["-4", "0.0.0.0/0"], ["-6", "::/0"]] as const) {
        if (!record.addresses.some((a) => a.includes(":") === (fam === "-6"))) continue;
        const r = await runner.exec([
          "ip",
          "-j",
          fam,
          "route",
          "show",
          "default",
          "dev",
          req.ifname,
        ], {
          netns: req.netns,
        });
        if (r.code !== 0 || JSON.parse(r.stdout || "[]").length === 0) {
          throw new CniError(
            ERR.internal,
            `Check of ${what} failed: default route ${dst} via ${req.ifname} is missing`,
          );
        }
      }
      const node = await wg.show(this.#o.nodeInterface);
      const peer = node.peers.find((p) => p.publicKey === record.publicKey);
      const exact = hostCidrs(record.addresses);
      if (!peer || [...peer.allowedIps].sort().join() !== [...exact].sort().join()) {
        throw new CniError(
          ERR.internal,
          `Check of ${what} failed: the node-side peer is missing or differs`,
        );
      }
    });
  }

  /** Releases every attachment not in `valid`; carries on past failures. */
  async gc(valid: readonly Attachment[]): Promise<GcResponse> {
    const keep = new Set(valid.map((a) => ownerOf(a.containerId, a.ifname)));
    const released: Attachment[] = [];
    const failed: (Attachment & { msg: string })[] = [];
    for (const r of this.#o.store.all()) {
      if (keep.has(ownerOf(r.containerId, r.ifname))) continue;
      try {
        await this.del(r);
        released.push({ containerId: r.containerId, ifname: r.ifname });
      } catch (err) {
        failed.push({ containerId: r.containerId, ifname: r.ifname, msg: String(err) });
      }
    }
    // Reservations without a record (a crash between steps of an older run).
    const known = new Set(this.#o.store.all().map((r) => ownerOf(r.containerId, r.ifname)));
    for (const owner of this.#o.addresses.owners()) {
      if (!keep.has(owner) && !known.has(owner)) this.#o.addresses.release(owner);
    }
    return { released, failed };
  }

  /**
   * After a restart: roll back half-done ADDs, release pods whose namespace
   * is gone (a reboot or a lost DEL), restore missing node-side peers of live
   * pods, and drop reservations no record explains. Live pods are untouched.
   */
  async reconcile(): Promise<{ rolledBack: number; released: number; restored: number }> {
    let rolledBack = 0, released = 0, restored = 0;
    const node = await this.#o.wg.show(this.#o.nodeInterface).catch(() => undefined);
    const peers = new Map(node?.peers.map((p) => [p.publicKey, p]) ?? []);
    for (const r of this.#o.store.all()) {
      if (r.phase === "adding") {
        await this.del(r);
        rolledBack++;
      } else if (!(await pathExists(r.netns))) {
        await this.del(r);
        released++;
      } else if (!peers.has(r.publicKey) && r.listenPort > 0) {
        await this.#o.wg.setPeer(this.#o.nodeInterface, {
          publicKey: r.publicKey,
          endpoint: `127.0.0.1:${r.listenPort}`,
          allowedIps: hostCidrs(r.addresses),
        });
        restored++;
      }
    }
    const known = new Set(this.#o.store.all().map((r) => ownerOf(r.containerId, r.ifname)));
    for (const owner of this.#o.addresses.owners()) {
      if (!known.has(owner)) this.#o.addresses.release(owner);
    }
    return { rolledBack, released, restored };
  }
}

/** [IPv4, IPv6] of a pod's addresses. */
function splitFamilies(addresses: readonly string[]): [string | undefined, string | undefined] {
  return [addresses.find((a) => !a.includes(":")), addresses.find((a) => a.includes(":"))];
}

/** A pod's addresses as /32 and /128. */
export function hostCidrs(addresses: readonly string[]): string[] {
  return addresses.map((a) => a.includes(":") ? `${a}/128` : `${a}/32`);
}

async function pathExists(path: string): Promise<boolean> {
  if (path === "") return false;
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
