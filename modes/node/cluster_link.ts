/**
 * The node's side of the cluster API: a client for each manager URL,
 * registration with the node's credential or the join token, registering
 * again when the credential is refused, and lease renewal. Failures are
 * sorted: a mistake in the set-up (a refused token or certificate, bad
 * input, another cluster's manager) stops with its cause; a manager that
 * cannot be reached is retried with backoff and a WARN now and then.
 */
import {
  AuthError,
  PoolExhaustedError,
  StaleStoreError,
  TransportError,
} from "../../lib/errors.ts";
import type { Logger } from "../../lib/log.ts";
import { type ClusterClient, createClusterClient } from "../../lib/api/cluster_client.ts";
import type { NodeReport, RegisterResponse } from "../../lib/api/cluster_types.ts";
import { type NodeCredential, saveCredential } from "./key.ts";
import { type ClusterMemory, ClusterMismatchError } from "./cluster_memory.ts";

/** Retry delays: 0.2 s doubling to 5 s, with jitter. */
export function backoff(attempt: number): number {
  const base = Math.min(5000, 200 * 2 ** Math.min(attempt, 5));
  return base / 2 + Math.random() * base / 2;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });
}

/** How often a node renews its lease (the cluster shows a node silent after a few missed). */
export const HEARTBEAT_MS = 30_000;

/** True for a failure that retrying cannot mend: the set-up must change. */
export function isPermanent(err: unknown): boolean {
  return err instanceof AuthError || err instanceof TransportError ||
    err instanceof ClusterMismatchError || err instanceof StaleStoreError ||
    err instanceof TypeError ||
    err instanceof RangeError || err instanceof PoolExhaustedError;
}

export interface ClusterLinkOptions {
  readonly urls: readonly string[];
  /** The join token, if given. */
  readonly token: string | undefined;
  readonly caCert: string | undefined;
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  /** The node found `endpoint` itself (no `--endpoint`): the manager may see it behind NAT. */
  readonly detectEndpoint?: boolean;
  /** The MTU of the node's underlay link, reported so others size what they send it. */
  readonly linkMtu?: number | undefined;
  readonly keyDir: string;
  readonly memory: ClusterMemory;
  readonly logger: Logger;
  /** The credential stored by an earlier registration, if any. */
  readonly credential: NodeCredential | undefined;
}

/** A WARN at most every 30 s while the managers cannot be reached. */
class Unreachable {
  #since: number | undefined;
  #last = 0;
  constructor(readonly log: Logger) {}

  failed(url: string, err: unknown): void {
    const now = Date.now();
    this.#since ??= now;
    if (now - this.#last < 30_000) return;
    this.#last = now;
    this.log.warn("cannot reach the cluster manager at {url} (for {seconds} s): {error}", {
      url,
      seconds: Math.round((now - this.#since) / 1000),
      error: (err as Error).message,
    });
  }

  reached(): void {
    this.#since = undefined;
    this.#last = 0;
  }
}

export class ClusterLink {
  readonly #o: ClusterLinkOptions;
  readonly #log: Logger;
  readonly unreachable: Unreachable;
  #credential: NodeCredential | undefined;
  /** The key this node registers with (a rotation changes it). */
  #publicKey: string;
  /** The URL (index) the peer stream follows: asked first. */
  current = 0;

  constructor(options: ClusterLinkOptions) {
    this.#o = options;
    this.#publicKey = options.publicKey;
    this.#log = options.logger;
    this.unreachable = new Unreachable(options.logger);
    this.#credential = options.credential?.name === options.name ? options.credential : undefined;
  }

  get urls(): readonly string[] {
    return this.#o.urls;
  }

  /** The node credential, or the join token while there is none. */
  get token(): string {
    return this.#credential?.credential ?? this.#o.token ?? "";
  }

  /** A client of the manager at `url` with `token` (default: {@linkcode token}). */
  client(url: string, token = this.token): ClusterClient {
    return createClusterClient(url, {
      token,
      ...(this.#o.caCert ? { caCert: this.#o.caCert } : {}),
    });
  }

  /**
   * Registers at start, trying the URLs in turn with backoff. Returns the
   * answer; `cached` (the last registration) when no manager can be reached,
   * or when one answers for another cluster (then the node keeps serving
   * from its state); undefined when `signal` aborts first. Throws for a
   * permanent problem, naming it.
   */
  async register(
    signal: AbortSignal,
    cached: RegisterResponse | undefined,
  ): Promise<RegisterResponse | undefined> {
    const { urls } = this.#o;
    for (let attempt = 0; !signal.aborted; attempt++) {
      const url = urls[attempt % urls.length]!;
      const byCredential = this.#credential !== undefined;
      if (!byCredential && this.#o.token === undefined) {
        throw new Error("Cannot register: no --token-file (or --token) and no stored credential");
      }
      try {
        const answer = await this.#registerAt(url, this.token);
        this.unreachable.reached();
        return answer;
      } catch (err) {
        if (
          (err instanceof ClusterMismatchError || err instanceof StaleStoreError) &&
          cached !== undefined
        ) {
          // Another cluster's manager, or one whose store lost changes: none of its answer is used.
          this.#log.error("{error}", { error: err.message });
          return cached;
        }
        if (err instanceof AuthError && byCredential && this.#o.token !== undefined) {
          // Refused by this node's own cluster (removed, or reset by an
          // admin), or by another cluster's manager, whose join token then
          // must not register this node there.
          try {
            await this.#sameCluster(url);
          } catch (e) {
            if (e instanceof ClusterMismatchError && cached !== undefined) {
              this.#log.error("{error}", { error: e.message });
              return cached;
            }
            throw e;
          }
          this.#log.warn(
            "the stored credential was refused; registering again with the join token",
          );
          this.#credential = undefined;
          continue;
        }
        if (isPermanent(err)) {
          throw new Error(`Cannot register with ${url}: ${(err as Error).message}`);
        }
        // A node that registered before keeps serving from its state.
        if (cached !== undefined) {
          this.#log.warn(
            "cannot reach the cluster manager at {url} ({error}); starting from the last registration",
            { url, error: (err as Error).message },
          );
          return cached;
        }
        this.unreachable.failed(url, err);
        await sleep(backoff(attempt), signal);
      }
    }
    return undefined;
  }

  /**
   * Registers again after the manager at `url` refused the credential
   * (removed by an admin, expired, reset): checks it serves this node's
   * cluster, then uses the join token. Throws when it cannot.
   */
  async reregister(url: string): Promise<void> {
    if (this.#o.token === undefined) {
      throw new AuthError("the node credential was refused and no join token was given");
    }
    await this.#sameCluster(url);
    await this.#registerAt(url, this.#o.token);
  }

  /**
   * Registers with a new key of this node (the end of a key rotation): the
   * manager the stream follows first, then the others; throws the last
   * failure. Later registrations use the new key too.
   */
  async registerKey(publicKey: string): Promise<RegisterResponse> {
    this.#publicKey = publicKey;
    const { urls } = this.#o;
    let last: unknown;
    for (let i = 0; i < urls.length; i++) {
      try {
        return await this.#registerAt(urls[(this.current + i) % urls.length]!, this.token);
      } catch (err) {
        last = err;
      }
    }
    throw last;
  }

  /**
   * Calls `fn` with a client of the manager the stream follows, then of the
   * others, until one answers; throws the last failure.
   */
  async call<T>(fn: (c: ClusterClient) => Promise<T>): Promise<T> {
    const { urls } = this.#o;
    let last: unknown = new Error("Not registered yet");
    if (this.#credential === undefined) throw last;
    for (let i = 0; i < urls.length; i++) {
      const c = this.client(urls[(this.current + i) % urls.length]!);
      try {
        return await fn(c);
      } catch (err) {
        last = err;
      } finally {
        c.close();
      }
    }
    throw last;
  }

  /**
   * Renews the lease every 30 s with what `report` says of the node: the
   * manager the stream follows first, then the others.
   */
  async heartbeats(signal: AbortSignal, report: () => Promise<NodeReport>): Promise<void> {
    const { urls } = this.#o;
    while (!signal.aborted) {
      await sleep(HEARTBEAT_MS, signal);
      if (signal.aborted || this.#credential === undefined) continue;
      for (let i = 0; i < urls.length; i++) {
        const url = urls[(this.current + i) % urls.length]!;
        const c = this.client(url);
        try {
          await c.heartbeat(this.#o.name, await report());
          break;
        } catch (err) {
          this.#log.debug("heartbeat to {url} failed: {error}", { url, error: err });
        } finally {
          c.close();
        }
      }
    }
  }

  /** One registration at `url`; the answer's cluster must be this node's, its credential is kept. */
  async #registerAt(url: string, token: string): Promise<RegisterResponse> {
    const c = this.client(url, token);
    let answer: RegisterResponse;
    try {
      answer = await c.register({
        name: this.#o.name,
        publicKey: this.#publicKey,
        endpoint: this.#o.endpoint,
        ...(this.#o.memory.revision > 0 ? { revision: this.#o.memory.revision } : {}),
        ...(this.#o.detectEndpoint ? { detectEndpoint: true } : {}),
        ...(this.#o.linkMtu !== undefined ? { mtu: this.#o.linkMtu } : {}),
      });
    } finally {
      c.close();
    }
    this.#o.memory.accept(answer.cluster.id, url);
    const clusterId = this.#o.memory.id;
    if (
      answer.credential !== this.#credential?.credential ||
      this.#credential?.clusterId !== clusterId
    ) {
      this.#credential = {
        name: this.#o.name,
        credential: answer.credential,
        clusterUrls: this.#o.urls,
        ...(clusterId !== undefined ? { clusterId } : {}),
      };
      await saveCredential(this.#o.keyDir, this.#credential);
    }
    return answer;
  }

  /** Throws ClusterMismatchError unless the manager at `url` answers for this node's cluster. */
  async #sameCluster(url: string): Promise<void> {
    const c = this.client(url, "");
    try {
      this.#o.memory.accept(await c.clusterId(), url);
    } finally {
      c.close();
    }
  }
}
