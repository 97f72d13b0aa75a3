/**
 * The MTU toward each node peer, learnt rather than assumed. The node
 * interface's MTU is the node's own link MTU less the largest WireGuard
 * overhead; a path to another node may carry less: that node's own link
 * (each node reports its link MTU when it registers, and the cluster hands
 * it out with its peer entry), or a narrower hop on the way, which the
 * kernel learns from "fragmentation needed" answers to WireGuard's own
 * packets (wireguard-go sets DF on them) and keeps per destination. The path toward a peer is the least of the three;
 * the tunnel MTU is that less the overhead of the endpoint's family (60 for
 * IPv4, 80 for IPv6), never below 1280 where pods have IPv6.
 *
 * A peer whose tunnel MTU is below the interface's gets routes of its own
 * with it (its subnets, more specific than the cluster's routes): what pods
 * send it is sized for the path (the node answers anything larger with
 * "fragmentation needed" or "packet too big", which the pod's kernel
 * remembers), so no packet is fragmented on the way. New peers are learnt
 * within a second, every peer again each minute; a relayed peer by its
 * relay's address.
 */
import type { Runner } from "../../lib/ip/runner.ts";
import type { Logger } from "../../lib/log.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import { parseHostPort } from "../../lib/domain/address.ts";

/** WireGuard's overhead over an IPv4 underlay: IPv4 20, UDP 8, WireGuard 32. */
export const IPV4_OVERHEAD = 60;
/** Over an IPv6 underlay: IPv6 40, UDP 8, WireGuard 32. */
export const IPV6_OVERHEAD = 80;
/** The least MTU IPv6 allows on a link. */
export const IPV6_MIN_MTU = 1280;
/** The least MTU IPv4 guarantees. */
const IPV4_MIN_MTU = 576;

/** How often the paths are looked at again (a path may narrow or widen). */
export const PATH_MTU_EVERY_MS = 60_000;

/** Paths probed at once. */
const PROBES_AT_ONCE = 8;

/**
 * The tunnel MTU toward a peer whose underlay path carries `pathMtu`: the
 * path less the overhead of its family, at most the interface's, at least
 * 1280 when pods have IPv6 (576 otherwise).
 */
export function tunnelMtu(
  pathMtu: number,
  underlay: 4 | 6,
  ifaceMtu: number,
  ipv6Pods: boolean,
): number {
  const fits = pathMtu - (underlay === 6 ? IPV6_OVERHEAD : IPV4_OVERHEAD);
  return Math.min(ifaceMtu, Math.max(ipv6Pods ? IPV6_MIN_MTU : IPV4_MIN_MTU, fits));
}

/** What the kernel knows of the path to a host: its MTU (a route's or a learnt one). */
export interface PathProbe {
  pathMtu(host: string): Promise<number | undefined>;
}

interface RouteGot {
  readonly dev?: string;
  readonly metrics?: readonly { readonly mtu?: number }[];
}

/**
 * {@linkcode PathProbe} with `ip route get`: a route's MTU, or what the
 * kernel learnt for that destination from "fragmentation needed" answers to
 * what was sent there (wireguard-go sends with DF set), at most the link's.
 * It sends nothing itself: the underlay carries nothing but WireGuard.
 */
export class SystemPathProbe implements PathProbe {
  readonly #runner: Runner;

  constructor(runner: Runner) {
    this.#runner = runner;
  }

  async pathMtu(host: string): Promise<number | undefined> {
    const route = await this.#route(host);
    if (route?.dev === undefined) return undefined;
    const linkMtu = await this.#linkMtu(route.dev);
    if (linkMtu === undefined) return undefined;
    return Math.min(linkMtu, routeMtu(route) ?? linkMtu);
  }

  async #route(host: string): Promise<RouteGot | undefined> {
    const r = await this.#runner.exec(["ip", "-j", "route", "get", host]);
    if (r.code !== 0) return undefined;
    try {
      return (JSON.parse(r.stdout) as RouteGot[])[0];
    } catch {
      return undefined;
    }
  }

  async #linkMtu(dev: string): Promise<number | undefined> {
    const r = await this.#runner.exec(["ip", "-j", "link", "show", "dev", dev]);
    if (r.code !== 0) return undefined;
    try {
      return (JSON.parse(r.stdout) as { mtu?: number }[])[0]?.mtu;
    } catch {
      return undefined;
    }
  }
}

function routeMtu(r: RouteGot): number | undefined {
  return r.metrics?.find((m) => m.mtu !== undefined)?.mtu;
}

/** Where a peer is sent to now (a relay, when one was chosen), and its entry. */
export interface PathPeer {
  readonly entry: PeerEntry;
  readonly endpoint: string | undefined;
}

export interface PathMtusOptions {
  readonly runner: Runner;
  readonly iface: string;
  readonly ifaceMtu: number;
  /** Pods have IPv6: no MTU below 1280. */
  readonly ipv6Pods: boolean;
  /** This node's underlay link MTU: no path carries more. */
  readonly linkMtu: number;
  /** The peers, once the node follows the cluster. */
  readonly peers: () => readonly PathPeer[] | undefined;
  readonly probe: PathProbe;
  readonly logger: Logger;
}

/** Keeps a route with the path's MTU for each node peer whose path is narrower than the interface. */
export class PathMtus {
  readonly #o: PathMtusOptions;
  /** Per peer key: the MTU set for its subnets, and the subnets. */
  readonly #set = new Map<string, { readonly mtu: number; readonly subnets: readonly string[] }>();
  /** Per peer key: the tunnel MTU last learnt. */
  readonly #learnt = new Map<string, number>();

  /** Routes with an MTU the interface had at start (a restart): kept if still wanted, else removed. */
  #adopted: string[] | undefined;

  constructor(o: PathMtusOptions) {
    this.#o = o;
  }

  /** The interface's routes that carry an MTU of their own (left by an earlier run). */
  async #existing(): Promise<string[]> {
    const out: string[] = [];
    for (const family of ["-4", "-6"]) {
      const r = await this.#o.runner.exec([
        "ip",
        "-j",
        family,
        "route",
        "show",
        "dev",
        this.#o.iface,
      ]);
      if (r.code !== 0) continue;
      try {
        for (const x of JSON.parse(r.stdout) as (RouteGot & { dst?: string })[]) {
          if (x.dst !== undefined && routeMtu(x) !== undefined) out.push(x.dst);
        }
      } catch {
        // Nothing to adopt.
      }
    }
    return out;
  }

  /** The tunnel MTU toward each peer learnt so far, by public key. */
  get learnt(): ReadonlyMap<string, number> {
    return this.#learnt;
  }

  /**
   * Learns every node peer's path (with `onlyNew`, those not learnt yet) and
   * sets or clears its routes; returns how many peers have routes.
   */
  async refresh(onlyNew = false): Promise<number> {
    const all = (this.#o.peers() ?? []).filter((p) =>
      p.entry.kind === "node" && p.endpoint !== undefined
    );
    const peers = onlyNew ? all.filter((p) => !this.#learnt.has(p.entry.publicKey)) : all;
    if (onlyNew && peers.length === 0 && all.length === this.#learnt.size) return this.#set.size;
    const keys = new Set(all.map((p) => p.entry.publicKey));
    for (const [key, had] of this.#set) {
      if (!keys.has(key)) {
        await this.#unroute(had.subnets);
        this.#set.delete(key);
      }
    }
    for (const key of this.#learnt.keys()) if (!keys.has(key)) this.#learnt.delete(key);
    this.#adopted ??= await this.#existing();
    for (let i = 0; i < peers.length; i += PROBES_AT_ONCE) {
      await Promise.all(peers.slice(i, i + PROBES_AT_ONCE).map((p) => this.#one(p)));
    }
    if (!onlyNew && this.#adopted.length > 0) {
      const kept = new Set([...this.#set.values()].flatMap((x) => x.subnets));
      await this.#unroute(this.#adopted.filter((d) => !kept.has(d)));
      this.#adopted = [];
    }
    return this.#set.size;
  }

  async #one(p: PathPeer): Promise<void> {
    const { host } = parseHostPort(p.endpoint!);
    // No larger than this node's link, the peer's (as it reported) and what the kernel knows of the way.
    const probed = await this.#o.probe.pathMtu(host).catch(() => undefined);
    const path = Math.min(this.#o.linkMtu, p.entry.mtu ?? Infinity, probed ?? Infinity);
    const mtu = tunnelMtu(path, host.includes(":") ? 6 : 4, this.#o.ifaceMtu, this.#o.ipv6Pods);
    const key = p.entry.publicKey;
    this.#learnt.set(key, mtu);
    const had = this.#set.get(key);
    const subnets = p.entry.allowedIps;
    if (mtu >= this.#o.ifaceMtu) {
      if (had !== undefined) {
        await this.#unroute(had.subnets);
        this.#set.delete(key);
        this.#o.logger.info("path to {name} carries the interface's MTU again", {
          name: p.entry.name,
        });
      }
      return;
    }
    if (had?.mtu === mtu && had.subnets.join() === subnets.join()) return;
    if (had !== undefined && had.subnets.join() !== subnets.join()) {
      await this.#unroute(had.subnets);
    }
    const r = await this.#o.runner.exec(["ip", "-batch", "-"], {
      stdin: subnets.map((s) => `route replace ${s} dev ${this.#o.iface} mtu ${mtu}`).join("\n") +
        "\n",
    });
    if (r.code !== 0) {
      this.#o.logger.warn("cannot set the MTU toward {name}: {error}", {
        name: p.entry.name,
        error: r.stderr.trim(),
      });
      return;
    }
    this.#set.set(key, { mtu, subnets: [...subnets] });
    this.#o.logger.info("path to {name} ({host}) carries {path}: MTU {mtu} toward its subnets", {
      name: p.entry.name,
      host,
      path,
      mtu,
    });
  }

  async #unroute(subnets: readonly string[]): Promise<void> {
    if (subnets.length === 0) return;
    await this.#o.runner.exec(["ip", "-batch", "-"], {
      stdin: subnets.map((s) => `route del ${s} dev ${this.#o.iface}`).join("\n") + "\n",
    });
  }

  /**
   * Learns new peers' paths within a second and every path again each
   * `every` (default {@linkcode PATH_MTU_EVERY_MS}), until `signal`.
   */
  async run(signal: AbortSignal, every = PATH_MTU_EVERY_MS): Promise<void> {
    let full = 0;
    while (!signal.aborted) {
      if (this.#o.peers() !== undefined) {
        const whole = Date.now() >= full;
        if (whole) full = Date.now() + every;
        await this.refresh(!whole).catch((err) =>
          this.#o.logger.warn("cannot learn the paths' MTU: {error}", { error: err })
        );
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, 1000);
        function done() {
          clearTimeout(t);
          signal.removeEventListener("abort", done);
          resolve();
        }
        signal.addEventListener("abort", done);
      });
    }
  }
}
