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
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(REPORT_EVERY_MS, signal);
      if (signal.aborted) break;
      await this.poll().catch((err) =>
        this.#o.logger.debug("cannot read the interface for NAT'd peers: {error}", { error: err })
      );
    }
  }
}
