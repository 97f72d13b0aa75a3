/**
 * Where a node's peers come from. Today one source, the cluster manager's
 * watch stream; the shape leaves room for others (a static list, a second
 * cluster) that hand the same events to the same mesh.
 */
import { AuthError, StaleStoreError, TransportError } from "../../lib/errors.ts";
import type { WatchEvent } from "../../lib/api/cluster_types.ts";
import type { Logger } from "../../lib/log.ts";
import { backoff, type ClusterLink, sleep } from "./cluster_link.ts";
import { type ClusterMemory, ClusterMismatchError } from "./cluster_memory.ts";

/** A stream of peer changes in revision order. */
export interface PeerSource {
  /** True while the source is live (its changes reach the node as they happen). */
  readonly connected: boolean;
  /**
   * Hands every change to `apply`, in order, until `signal` aborts;
   * `revision()` is the last revision applied (to resume from).
   */
  run(
    apply: (event: WatchEvent) => Promise<void>,
    revision: () => number | undefined,
    signal: AbortSignal,
  ): Promise<void>;
}

/**
 * The cluster manager's watch stream. A lost or refused stream moves to the
 * next URL (the first switch at once, then with backoff), resuming from the
 * last revision applied; the interface and its peers stay as they are
 * meanwhile. A manager of another cluster, or whose snapshot is behind what
 * the node applied, is refused and asked again every 10 s.
 */
export class ClusterWatch implements PeerSource {
  readonly #link: ClusterLink;
  readonly #memory: ClusterMemory;
  readonly #log: Logger;
  #connected = false;
  /** Streams that broke after they were open (for metrics and status). */
  reconnects = 0;

  constructor(options: { link: ClusterLink; memory: ClusterMemory; logger: Logger }) {
    this.#link = options.link;
    this.#memory = options.memory;
    this.#log = options.logger;
  }

  get connected(): boolean {
    return this.#connected;
  }

  async run(
    apply: (event: WatchEvent) => Promise<void>,
    revision: () => number | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    const link = this.#link;
    let since: number | undefined = revision();
    for (let attempt = 0; !signal.aborted;) {
      const url = link.urls[link.current]!;
      const client = link.client(url);
      let refused = false;
      try {
        const opened = () => {
          if (!this.#connected) this.#log.info("following peers from {url}", { url });
          this.#connected = true;
          link.unreachable.reached();
          attempt = 0;
        };
        for await (const event of client.watch(since, signal, { onOpen: opened })) {
          // A snapshot behind what was applied comes from a store that lost changes.
          if (event.type === "snapshot") this.#memory.checkSnapshot(event.revision, url);
          opened();
          await apply(event);
          since = revision();
          if (since !== undefined) this.#memory.applied(since);
        }
      } catch (err) {
        if (signal.aborted) break;
        refused = await this.#failed(url, err, () => since = undefined);
      } finally {
        client.close();
      }
      const wasConnected = this.#connected;
      if (wasConnected) this.reconnects++;
      this.#connected = false;
      link.current = (link.current + 1) % link.urls.length;
      attempt++;
      // Asked again now and then: a store may be restored, a certificate replaced.
      if (refused) await sleep(10_000, signal);
      else if (!(wasConnected && link.urls.length > 1)) await sleep(backoff(attempt), signal);
    }
  }

  /** Deals with a failed stream; true when the manager refused this node for good reason. */
  async #failed(url: string, err: unknown, resync: () => void): Promise<boolean> {
    if (err instanceof ClusterMismatchError || err instanceof TransportError) {
      this.#log.error("{error}", { error: err.message });
      return true;
    }
    if (err instanceof AuthError) {
      // Removed by an admin, expired or reset: join again with the same key.
      this.#log.warn("the node credential was refused by {url}; registering again", { url });
      try {
        await this.#link.reregister(url);
        resync();
        return false;
      } catch (e) {
        const permanent = e instanceof ClusterMismatchError || e instanceof AuthError ||
          e instanceof TransportError || e instanceof StaleStoreError;
        if (permanent) {
          this.#log.error("Cannot register again: {error}", { error: (e as Error).message });
        } else {this.#log.warn("cannot register again yet: {error}", {
            error: (e as Error).message,
          });}
        return permanent;
      }
    }
    if (this.#connected) {
      this.#log.warn("lost the cluster manager at {url}: {error}", {
        url,
        error: (err as Error).message,
      });
    } else this.#link.unreachable.failed(url, err);
    return false;
  }
}
