/**
 * Nodes behind NAT, as seen from a node that is not.
 *
 * A node that joined without `--endpoint` and came to the manager from
 * another address is marked behind NAT; it sends every node peer a
 * keep-alive, so its NAT keeps a mapping for its WireGuard port, and
 * WireGuard on the other side moves the peer's endpoint to where the
 * handshakes come from. What a node not behind NAT sees there is what
 * {@linkcode EndpointReporter} tells the manager, which gives it to every
 * node: two nodes behind NATs that map one port to the same outside port
 * for every destination then reach each other at those endpoints (both send
 * keep-alives, so each NAT lets the other's packets in).
 */
import type { Logger } from "../../lib/log.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import type { InterfaceState } from "../../lib/wireguard/types.ts";
import { sleep } from "./cluster_link.ts";

/** How often the interface is read while some peer is behind NAT. */
export const REPORT_EVERY_MS = 2_000;
/** A handshake older than this says nothing about where the peer is now (WireGuard: 180 s). */
const FRESH_HANDSHAKE_S = 180;

const READ = "cannot read the interface for NAT'd peers: {error}";
const CHECK = "cannot check the paths to NAT'd nodes: {error}";

/** Runs `poll` every {@linkcode REPORT_EVERY_MS} until `signal`; a failure goes to `log`. */
async function pollUntil(
  signal: AbortSignal,
  poll: () => Promise<void>,
  log: (message: string, props: { error: unknown }) => void,
  message: string,
): Promise<void> {
  while (!signal.aborted) {
    await sleep(REPORT_EVERY_MS, signal);
    if (signal.aborted) break;
    await poll().catch((err) => log(message, { error: err }));
  }
}

/**
 * The endpoints to report: NAT'd node peers whose interface endpoint, from
 * a fresh handshake, is not what the cluster has, and was not reported yet.
 */
export function endpointsToReport(
  peers: readonly PeerEntry[],
  state: Pick<InterfaceState, "peers">,
  reported: ReadonlyMap<string, string>,
  nowS: number,
): { name: string; endpoint: string }[] {
  const byKey = new Map(state.peers.map((p) => [p.publicKey, p]));
  const out: { name: string; endpoint: string }[] = [];
  for (const e of peers) {
    if (e.kind !== "node" || !e.nat) continue;
    const p = byKey.get(e.publicKey);
    if (p?.endpoint == null || p.latestHandshake === 0) continue;
    if (nowS - p.latestHandshake > FRESH_HANDSHAKE_S) continue;
    if (p.endpoint === e.endpoint || reported.get(e.name) === p.endpoint) continue;
    out.push({ name: e.name, endpoint: p.endpoint });
  }
  return out;
}

export interface EndpointReporterOptions {
  /** Reads the node interface. */
  readonly show: () => Promise<Pick<InterfaceState, "peers">>;
  /** The mesh's peers; undefined until it has its first snapshot. */
  readonly peers: () => readonly PeerEntry[] | undefined;
  /** Tells the manager (POST /v1/nodes/:name/endpoint). */
  readonly report: (name: string, endpoint: string) => Promise<unknown>;
  readonly logger: Logger;
}

/** Tells the manager where this node's interface sees NAT'd nodes (on a node not behind NAT). */
export class EndpointReporter {
  readonly #o: EndpointReporterOptions;
  /** What was reported of each node, so that it is said once per change. */
  readonly #reported = new Map<string, string>();
  /** Reports the manager took. */
  reports = 0;

  constructor(options: EndpointReporterOptions) {
    this.#o = options;
  }

  /** One look at the interface; reports what changed. */
  async poll(nowS = Date.now() / 1000): Promise<void> {
    const peers = this.#o.peers();
    if (peers === undefined || !peers.some((e) => e.kind === "node" && e.nat)) return;
    const todo = endpointsToReport(peers, await this.#o.show(), this.#reported, nowS);
    for (const { name, endpoint } of todo) {
      try {
        await this.#o.report(name, endpoint);
        this.#reported.set(name, endpoint);
        this.reports++;
        this.#o.logger.info("node {name} is behind NAT; its handshakes come from {endpoint}", {
          name,
          endpoint,
        });
      } catch (err) {
        this.#o.logger.warn("cannot tell the manager where node {name} is seen: {error}", {
          name,
          error: err,
        });
      }
    }
    const live = new Set(peers.map((e) => e.name));
    for (const name of this.#reported.keys()) if (!live.has(name)) this.#reported.delete(name);
  }

  /** Polls every {@linkcode REPORT_EVERY_MS} until `signal`. */
  run(signal: AbortSignal): Promise<void> {
    return pollUntil(signal, () => this.poll(), this.#o.logger.debug.bind(this.#o.logger), READ);
  }
}

/** A NAT'd node peer with no handshake this long after it was added is relayed. */
export const RELAY_AFTER_MS = 20_000;
/** A node peer from which nothing came this long (keep-alives come every 25 s) has no path. */
const SILENT_MS = 60_000;

interface PathState {
  /** When this node first had the peer (ms). */
  added: number;
  /** The relay endpoint, while relayed. */
  relay?: string;
  relayedAt?: number;
  lastProbe?: number;
  /** Bytes received from the peer at the last look, and when they last grew (ms). */
  rx: number;
  lastRx: number;
  /** No relay asked before this (a refused ask waits). */
  askAfter?: number;
}

export interface PathKeeperOptions {
  /** Reads the node interface. */
  readonly show: () => Promise<Pick<InterfaceState, "peers">>;
  /** The mesh's peers; undefined until it has its first snapshot. */
  readonly peers: () => readonly PeerEntry[] | undefined;
  /** Asks the manager for the relay endpoint toward a node (POST /v1/relay). */
  readonly relay: (name: string) => Promise<string>;
  /** Sends to an endpoint of this node's choosing, or the cluster's again (Mesh.choose). */
  readonly choose: (
    publicKey: string,
    endpoint: string | undefined,
    apply?: boolean,
  ) => Promise<void>;
  /** Sets the peer's endpoint on the interface and nothing else (a try of the direct path). */
  readonly setEndpoint: (publicKey: string, endpoint: string) => Promise<void>;
  /** Pings the peer node's gateway once; true when it answered within a second. */
  readonly ping: (peer: PeerEntry) => Promise<boolean>;
  /** How long a relayed pair waits before trying the direct path again. */
  readonly probeMs: number;
  readonly logger: Logger;
  readonly now?: () => number;
}

/**
 * On a node behind NAT: which path each NAT'd node peer takes. One that gets
 * no handshake (two NATs that pick a port per destination, UDP blocked) is
 * relayed through the cluster manager; a relayed one tries the direct path
 * again every `probeMs` by sending there. WireGuard itself settles it: if the
 * other side gets those packets it moves to where they came from and answers
 * directly; if not, its packets still come through the relay and this side's
 * interface moves back there. A direct path that dies (no handshake for a
 * session's lifetime) goes back to the relay.
 */
export class PathKeeper {
  readonly #o: PathKeeperOptions;
  readonly #state = new Map<string, PathState>();
  /** Pairs moved to the relay, and back to the direct path (tests, status). */
  relayed = 0;
  direct = 0;

  constructor(options: PathKeeperOptions) {
    this.#o = options;
  }

  #now(): number {
    return this.#o.now?.() ?? Date.now();
  }

  /** Whether the peer of this key is relayed now. */
  isRelayed(publicKey: string): boolean {
    return this.#state.get(publicKey)?.relay !== undefined;
  }

  async poll(): Promise<void> {
    const peers = this.#o.peers();
    if (peers === undefined) return;
    const natted = peers.filter((e) => e.kind === "node" && e.nat);
    const live = new Set(natted.map((e) => e.publicKey));
    for (const key of this.#state.keys()) if (!live.has(key)) this.#state.delete(key);
    if (natted.length === 0) return;
    const byKey = new Map((await this.#o.show()).peers.map((p) => [p.publicKey, p]));
    const now = this.#now();
    for (const e of natted) {
      const p = byKey.get(e.publicKey);
      if (p === undefined) continue;
      let st = this.#state.get(e.publicKey);
      if (st === undefined) {
        st = { added: now, rx: p.rxBytes, lastRx: now };
        this.#state.set(e.publicKey, st);
      }
      const got = p.rxBytes > st.rx;
      st.rx = p.rxBytes;
      if (got) st.lastRx = now;
      if (st.relay === undefined) {
        await this.#maybeRelay(e, st, p.latestHandshake * 1000, now);
        continue;
      }
      // Packets came from elsewhere than the relay (the interface moved there),
      // or it is time to try: the direct path is taken only if it answers,
      // since a path may work one way only.
      const moved = got && p.endpoint !== null && p.endpoint !== st.relay;
      const due = now - (st.lastProbe ?? st.relayedAt ?? now) >= this.#o.probeMs;
      if (e.endpoint === undefined || !(moved || due)) continue;
      st.lastProbe = now;
      if (await this.#probe(e, st)) {
        await this.#o.choose(e.publicKey, undefined, false);
        this.#o.logger.info("node {name} answers on the direct path {endpoint}: not relayed", {
          name: e.name,
          endpoint: e.endpoint,
        });
        // Its handshakes count from here on (added 0: not "never had one").
        this.#state.set(e.publicKey, { added: 0, rx: st.rx, lastRx: now });
        this.direct++;
      }
    }
  }

  /**
   * Tries the direct path: sends the peer one packet there and waits a
   * moment for an answer. If it gets through, the peer's WireGuard moves to
   * where it came from and answers there; if not, the relay endpoint is put
   * back (what this node sent meanwhile is lost: a second at most).
   */
  async #probe(e: PeerEntry, st: PathState): Promise<boolean> {
    await this.#o.setEndpoint(e.publicKey, e.endpoint!);
    // An answer means the peer got the packet on the direct path (nothing else
    // went there), moved to where it came from, and answered there.
    if (await this.#o.ping(e)) {
      const p = (await this.#o.show()).peers.find((x) => x.publicKey === e.publicKey);
      if (p !== undefined) st.rx = p.rxBytes;
      if (p?.endpoint === e.endpoint) return true;
    }
    await this.#o.setEndpoint(e.publicKey, st.relay!);
    return false;
  }

  async #maybeRelay(e: PeerEntry, st: PathState, handshakeMs: number, now: number) {
    const never = handshakeMs < st.added;
    // Had a path, and nothing came for two keep-alives and more.
    const dead = !never && now - st.lastRx > SILENT_MS;
    if (!(never && now - st.added >= RELAY_AFTER_MS) && !dead) return;
    if ((st.askAfter ?? 0) > now) return;
    let endpoint: string;
    try {
      endpoint = await this.#o.relay(e.name);
    } catch (err) {
      st.askAfter = now + 30_000;
      this.#o.logger.warn("no path to node {name}, and no relay: {error}", {
        name: e.name,
        error: err,
      });
      return;
    }
    st.relay = endpoint;
    st.relayedAt = now;
    await this.#o.choose(e.publicKey, endpoint);
    this.relayed++;
    this.#o.logger.info("node {name} cannot be reached directly: relayed through {endpoint}", {
      name: e.name,
      endpoint,
    });
  }

  /** Polls every {@linkcode REPORT_EVERY_MS} until `signal`. */
  run(signal: AbortSignal): Promise<void> {
    return pollUntil(signal, () => this.poll(), this.#o.logger.warn.bind(this.#o.logger), CHECK);
  }
}
