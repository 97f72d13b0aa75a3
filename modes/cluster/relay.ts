/**
 * The relay (`cluster serve --relay-listen ADDR:PORT`): for two nodes that
 * cannot reach each other (both behind NATs that pick a port per
 * destination, or UDP blocked between them), WireGuard packets go through
 * the manager still encrypted.
 *
 * A relayed pair gets two UDP ports from the relay's range, one per side:
 * each node sends to its own port, and the relay passes what comes in on
 * one side's port out of the other side's port to where that side was last
 * seen. Packets leave from the port the receiving node itself sends to, so
 * its NAT takes them as replies. A side's address is learnt only from
 * packets coming from that node's known address (its endpoint's host), so
 * nobody else can take a side over. The relay sees only ciphertext; a pair
 * with no packets for the idle time gives its ports back.
 */
import dgram from "node:dgram";
import type { Logger } from "../../lib/log.ts";
import { joinHostPort, unmappedAddress } from "../../lib/domain/address.ts";
import { PoolExhaustedError } from "../../lib/errors.ts";
import type { RelayCounts, RelayService } from "../../lib/api/cluster_app.ts";

/** How long a relayed pair lasts without a packet (WireGuard keep-alives come every 25 s). */
export const RELAY_IDLE_MS = 5 * 60_000;

interface Side {
  readonly node: string;
  /** The host this node's packets must come from. */
  readonly host: string;
  readonly port: number;
  readonly socket: dgram.Socket;
  seen?: { address: string; port: number };
}

interface Pair {
  readonly key: string;
  readonly sides: readonly [Side, Side];
  last: number;
}

export interface RelayOptions {
  /** The address the relay's ports listen on (and nodes send to). */
  readonly address: string;
  /** The first port of the range; the relay uses `ports` ports from it, two per pair. */
  readonly firstPort: number;
  readonly ports: number;
  readonly idleMs?: number;
  readonly logger: Logger;
  /** The clock (tests). */
  readonly now?: () => number;
}

export class Relay implements RelayService {
  readonly #o: RelayOptions;
  readonly #pairs = new Map<string, Pair>();
  readonly #used = new Set<number>();
  readonly #counts = { packets: 0, bytes: 0, refused: 0 };
  readonly #sweeper: ReturnType<typeof setInterval>;

  constructor(options: RelayOptions) {
    this.#o = options;
    this.#sweeper = setInterval(() => this.sweep(), 10_000);
    // The sweep alone keeps no process alive.
    const t: unknown = this.#sweeper;
    if (typeof t === "number") Deno.unrefTimer(t);
    else (t as { unref?: () => void }).unref?.();
  }

  /** The counters, and the pairs relayed now. */
  get stats(): RelayCounts {
    return { pairs: this.#pairs.size, ...this.#counts };
  }

  get address(): string {
    return this.#o.address;
  }

  #now(): number {
    return this.#o.now?.() ?? Date.now();
  }

  /**
   * The relay endpoint `node` (whose packets come from `host`) sends to for
   * its pair with `other` (from `otherHost`); the pair is made on first ask.
   */
  async endpointFor(
    node: string,
    host: string,
    other: string,
    otherHost: string,
  ): Promise<string> {
    const key = [node, other].sort().join(" ");
    let pair = this.#pairs.get(key);
    if (pair !== undefined && !pair.sides.some((s) => s.node === node && s.host === host)) {
      // A side moved (the node came back from elsewhere): the pair is made anew.
      this.#drop(pair);
      pair = undefined;
    }
    if (pair === undefined) {
      const a = await this.#side(node, host);
      let b: Side;
      try {
        b = await this.#side(other, otherHost);
      } catch (err) {
        this.#close(a);
        throw err;
      }
      pair = { key, sides: [a, b], last: this.#now() };
      a.socket.on("message", (msg, from) => this.#pass(pair!, a, b, msg, from));
      b.socket.on("message", (msg, from) => this.#pass(pair!, b, a, msg, from));
      this.#pairs.set(key, pair);
      this.#o.logger.info("relaying {a} ↔ {b} on ports {pa} and {pb}", {
        a: a.node,
        b: b.node,
        pa: a.port,
        pb: b.port,
      });
    }
    const side = pair.sides.find((s) => s.node === node)!;
    return joinHostPort(this.#o.address, side.port);
  }

  #pass(pair: Pair, from: Side, to: Side, msg: Uint8Array, rinfo: dgram.RemoteInfo): void {
    if (unmappedAddress(rinfo.address) !== from.host) {
      this.#counts.refused++;
      return;
    }
    from.seen = { address: rinfo.address, port: rinfo.port };
    pair.last = this.#now();
    if (to.seen === undefined) return;
    this.#counts.packets++;
    this.#counts.bytes += msg.byteLength;
    to.socket.send(msg, to.seen.port, to.seen.address);
  }

  /** A free port of the range, bound. */
  async #side(node: string, host: string): Promise<Side> {
    const { firstPort, ports } = this.#o;
    for (let port = firstPort; port < firstPort + ports; port++) {
      if (this.#used.has(port)) continue;
      this.#used.add(port);
      try {
        const socket = await bind(this.#o.address, port);
        return { node, host: unmappedAddress(host), port, socket };
      } catch {
        // Taken by something else: the next one.
        this.#used.delete(port);
      }
    }
    throw new PoolExhaustedError(
      `The relay has no free port left in ${firstPort}-${
        firstPort + ports - 1
      } (two per relayed pair)`,
    );
  }

  /** Gives back the ports of pairs idle for the idle time, and of `gone` nodes. */
  sweep(gone: ReadonlySet<string> = new Set()): void {
    const idle = this.#o.idleMs ?? RELAY_IDLE_MS;
    for (const pair of [...this.#pairs.values()]) {
      if (this.#now() - pair.last >= idle || pair.sides.some((s) => gone.has(s.node))) {
        this.#drop(pair);
        this.#o.logger.info("relay of {a} ↔ {b} ended", {
          a: pair.sides[0].node,
          b: pair.sides[1].node,
        });
      }
    }
  }

  #drop(pair: Pair): void {
    this.#pairs.delete(pair.key);
    for (const s of pair.sides) this.#close(s);
  }

  #close(s: Side): void {
    // The port is free again once the socket is closed.
    try {
      s.socket.close(() => this.#used.delete(s.port));
    } catch {
      this.#used.delete(s.port);
    }
  }

  close(): void {
    clearInterval(this.#sweeper);
    for (const pair of [...this.#pairs.values()]) this.#drop(pair);
  }
}

function bind(address: string, port: number): Promise<dgram.Socket> {
  const socket = dgram.createSocket(address.includes(":") ? "udp6" : "udp4");
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, address, () => {
      socket.off("error", reject);
      socket.on("error", () => {});
      resolve(socket);
    });
  });
}
