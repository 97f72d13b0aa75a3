/**
 * `wgcni cluster serve`: opens the store in the data directory, puts the
 * bootstrap tokens in place, serves the cluster API over HTTP(S), expires
 * leases in the background, and shuts down cleanly on SIGTERM or SIGINT.
 */
import { joinHostPort } from "../../lib/domain/address.ts";
import type { Logger } from "../../lib/log.ts";
import { createClusterApp } from "../../lib/api/cluster_app.ts";
import { Relay } from "./relay.ts";
import type { ClusterStore } from "../../lib/store/cluster_store.ts";
import type { EtcdConnection } from "../../lib/store/cluster_etcd.ts";
import { normalizePools } from "../../lib/store/cluster_pools.ts";
import { join } from "node:path";
import { StoreCorruptError } from "../../lib/errors.ts";
import {
  DATA_FILES,
  openClusterState,
  readRevisionMark,
  writeRevisionMark,
  writeSecretFile,
} from "./state.ts";
import { bootstrapTokens } from "./bootstrap.ts";
import { formatDuration } from "./duration.ts";
import { parseListen } from "../../lib/listen.ts";

export { parseListen };
import {
  DEFAULT_LIMITS,
  type HttpLimits,
  type HttpServer,
  serveHttp,
} from "../../lib/api/http_server.ts";

/** Everything `serve` needs, already parsed from flags, environment and config file. */
export interface ServeConfig {
  /** `ADDR:PORT` or `[IPv6]:PORT`; port 0 picks a free port (logged). */
  readonly listen: string;
  readonly dataDir: string;
  /** Several replicas share this etcd cluster; absent: the embedded SQLite store in `dataDir`. */
  readonly etcd?: EtcdConnection;
  readonly podCidrs: readonly string[];
  readonly clientCidrs: readonly string[];
  readonly nodeMaskV4: number;
  readonly nodeMaskV6: number;
  readonly joinToken?: string;
  readonly adminToken?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  /** Allows plain HTTP on a non-loopback address. */
  readonly insecure: boolean;
  /** A node not heard from for this long is removed. */
  readonly leaseMs: number;
  /** A removed node's subnets wait this long before reuse. */
  readonly graceMs: number;
  /** Keep-alive interval of watch streams. */
  readonly keepAliveMs?: number;
  /** Bounds on connections and requests (defaults: {@linkcode DEFAULT_LIMITS}, the total fitted to the open-file limit). */
  readonly limits?: Partial<HttpLimits>;
  /** Watch streams one credential may hold (default 4). */
  readonly maxWatchesPerCredential?: number;
  /** The embedded store was restored from a backup on purpose (see openClusterState). */
  readonly restored?: boolean;
  /** `ADDR:PORT`: relay nodes that cannot reach each other, on ports from PORT (modes/cluster/relay.ts). */
  readonly relayListen?: string;
  /** How many ports the relay uses from its first (two per relayed pair; default 256). */
  readonly relayPorts?: number;
}

export interface ServeOptions {
  readonly logger: Logger;
  /** Shows operator-facing lines (generated tokens) on stdout. */
  readonly print: (line: string) => void;
  /** Stops the server like SIGTERM does. */
  readonly signal?: AbortSignal;
}

/** Runs the cluster manager until SIGTERM, SIGINT or `options.signal`. */
export async function serve(config: ServeConfig, options: ServeOptions): Promise<void> {
  const { logger } = options;
  const listen = parseListen(config.listen);
  const relayAt = config.relayListen === undefined ? undefined : parseListen(config.relayListen);
  if (relayAt !== undefined) {
    if (relayAt.port === 0 || /^(0\.0\.0\.0|::)$/.test(relayAt.hostname)) {
      throw new RangeError(
        `Cannot relay on ${config.relayListen}: give the address and first port nodes send to (not 0.0.0.0, ::, or port 0)`,
      );
    }
    const ports = config.relayPorts ?? 256;
    if (relayAt.port + ports - 1 > 65535) {
      throw new RangeError(
        `Cannot relay on ${config.relayListen}: ${ports} ports from ${relayAt.port} go past 65535`,
      );
    }
  }
  const tls = config.tlsCert !== undefined || config.tlsKey !== undefined;
  if (tls && (config.tlsCert === undefined || config.tlsKey === undefined)) {
    throw new TypeError("Cannot serve TLS: give both --tls-cert and --tls-key");
  }
  if (!tls && !listen.loopback && !config.insecure) {
    throw new TypeError(
      `Cannot serve plain HTTP on ${config.listen}: it is not a loopback address; give --tls-cert and --tls-key, or --insecure to allow it`,
    );
  }
  const pools = normalizePools({
    podCidrs: config.podCidrs,
    clientCidrs: config.clientCidrs,
    nodeMaskV4: config.nodeMaskV4,
    nodeMaskV6: config.nodeMaskV6,
  });
  const cert = config.tlsCert === undefined ? undefined : readPem(config.tlsCert, "--tls-cert");
  const key = config.tlsKey === undefined ? undefined : readPem(config.tlsKey, "--tls-key");

  let store: ClusterStore;
  if (config.etcd === undefined) {
    store = openClusterState(config.dataDir, {
      pools,
      graceMs: config.graceMs,
      logger,
      groupCommit: true,
      restored: config.restored === true,
    });
  } else {
    const { EtcdClusterStore } = await import("../../lib/store/cluster_etcd.ts");
    Deno.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    store = await EtcdClusterStore.open({
      ...config.etcd,
      pools,
      graceMs: config.graceMs,
      logger,
    });
    const markerPath = join(config.dataDir, DATA_FILES.marker);
    const marker = (() => {
      try {
        return Deno.readTextFileSync(markerPath).trim();
      } catch {
        return undefined;
      }
    })();
    const before = store.getFlag("cluster-id");
    if (before === undefined && marker !== undefined) {
      await store.close();
      throw new StoreCorruptError(
        `Cannot start: etcd holds no cluster under ${
          config.etcd.prefix ?? "/wgcni/"
        }, but ${markerPath} says this manager served cluster ${marker}; etcd was emptied or is another one. Restore etcd from a snapshot, or remove ${markerPath} to create a new cluster (every node must then leave and join again)`,
      );
    }
    if (await store.initFlag("cluster-id", crypto.randomUUID().slice(0, 16))) {
      logger.info("Created the cluster in etcd under {prefix}", {
        prefix: config.etcd.prefix ?? "/wgcni/",
      });
    }
    const id = store.getFlag("cluster-id")!;
    if (marker !== undefined && marker !== id) {
      await store.close();
      throw new StoreCorruptError(
        `Cannot start: etcd holds cluster ${id}, but ${markerPath} says this manager served cluster ${marker}`,
      );
    }
    if (marker === undefined) writeSecretFile(markerPath, id + "\n");
  }
  const stop = new AbortController();
  let server: HttpServer | undefined;
  let listener: Deno.Listener | undefined;
  let sweeper: ReturnType<typeof setInterval> | undefined;
  let marker: ReturnType<typeof setInterval> | undefined;
  let relay: Relay | undefined;
  let unlisten = () => {};
  let markRevision = () => {};
  const onSignal = () => stop.abort();
  try {
    // Listening comes first: a taken port is reported before anything is generated.
    listener = openListener(config.listen, listen, cert, key);
    const limits = { ...fitToFileLimit(logger), ...config.limits };
    for (
      const line of await bootstrapTokens(store, {
        dataDir: config.dataDir,
        ...(config.joinToken !== undefined ? { joinToken: config.joinToken } : {}),
        ...(config.adminToken !== undefined ? { adminToken: config.adminToken } : {}),
        now: Date.now(),
      })
    ) options.print(line);

    if (relayAt !== undefined) {
      relay = new Relay({
        address: relayAt.hostname,
        firstPort: relayAt.port,
        ports: config.relayPorts ?? 256,
        logger,
      });
      // A node that leaves (or gets a new key) takes its relayed pairs with it.
      const r = relay;
      unlisten = store.listen((e) => {
        if (e.type === "delete" && e.kind === "node") r.sweep(new Set([e.name]));
      });
      logger.info(
        "Relaying between nodes that cannot reach each other on {address} ports {from}-{to}",
        {
          address: relayAt.hostname,
          from: relayAt.port,
          to: relayAt.port + (config.relayPorts ?? 256) - 1,
        },
      );
    }
    const app = createClusterApp({
      store,
      logger,
      ...(relay !== undefined ? { relay, relayStats: () => relay!.stats } : {}),
      signal: stop.signal,
      connectionStats: () => server?.stats,
      ...(config.maxWatchesPerCredential !== undefined
        ? { maxWatchesPerCredential: config.maxWatchesPerCredential }
        : {}),
      ...(config.keepAliveMs !== undefined ? { keepAliveMs: config.keepAliveMs } : {}),
    });
    // Time the manager was down does not count against a lease: nodes could
    // not check in then, and the data plane never depended on us.
    const startedAt = Date.now();
    let sweeping = false;
    const expire = async () => {
      if (sweeping) return;
      sweeping = true;
      try {
        if (Date.now() - startedAt < config.leaseMs) {
          await store.expire(Date.now(), Number.MAX_SAFE_INTEGER);
          return;
        }
        const gone = await store.expire(Date.now(), config.leaseMs);
        for (const name of gone) {
          logger.warn("Removed node {name}: not heard from for {lease}", {
            name,
            lease: formatDuration(config.leaseMs),
          });
        }
      } catch (err) {
        logger.error("Expiring leases failed: {error}", { error: err });
      } finally {
        sweeping = false;
      }
    };
    await expire();
    sweeper = setInterval(expire, Math.min(60_000, Math.max(1000, config.leaseMs / 10)));
    if (config.etcd === undefined) {
      // The revision served, outside the database: a store that later loses
      // commits is refused at start instead of served to nodes ahead of it.
      let marked = readRevisionMark(config.dataDir) ?? -1;
      markRevision = () => {
        const revision = store.revision();
        if (revision === marked) return;
        try {
          writeRevisionMark(config.dataDir, revision);
          marked = revision;
        } catch (err) {
          logger.warn("Cannot record the revision served: {error}", { error: err });
        }
      };
      marker = setInterval(markRevision, 1000);
    }

    Deno.addSignalListener("SIGTERM", onSignal);
    Deno.addSignalListener("SIGINT", onSignal);
    options.signal?.addEventListener("abort", onSignal, { once: true });

    server = serveHttp(listener, (req, info) => app.fetch(req, info), {
      limits,
      logger,
      scheme: tls ? "https" : "http",
    });
    const addr = listener.addr as Deno.NetAddr;
    logger.info("Listening on {url}", {
      url: `${tls ? "https" : "http"}://${joinHostPort(addr.hostname, addr.port)}`,
      revision: store.revision(),
      nodes: store.listNodes().length,
      pools: pools.podCidrs,
      maxConnections: server.limits.maxConnections,
      maxConnectionsPerSource: server.limits.maxConnectionsPerSource,
    });
    await new Promise<void>((resolve) => {
      if (stop.signal.aborted) resolve();
      else stop.signal.addEventListener("abort", () => resolve(), { once: true });
    });
    logger.info("Shutting down");
  } finally {
    stop.abort();
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    if (sweeper !== undefined) clearInterval(sweeper);
    if (server !== undefined) await server.shutdown();
    else listener?.close();
    if (marker !== undefined) clearInterval(marker);
    unlisten();
    relay?.close();
    await Promise.resolve(store.committed()).catch(() => {});
    markRevision();
    await store.close();
  }
}

/**
 * Connections the kernel holds for the server until it accepts them. Every
 * node connects at once after a manager restart or in a cold start, twice
 * (its registration, then its watch); with the usual 511, the ones past it
 * are dropped and retried by their kernels a second or more later.
 * (net.core.somaxconn caps it.)
 */
const LISTEN_BACKLOG = 4096;

/** Opens the TCP (or TLS) listener; an address in use or not ours is named in the error. */
function openListener(
  text: string,
  listen: { hostname: string; port: number },
  cert: string | undefined,
  key: string | undefined,
): Deno.Listener {
  try {
    const at = { hostname: listen.hostname, port: listen.port, tcpBacklog: LISTEN_BACKLOG };
    return cert !== undefined && key !== undefined
      ? Deno.listenTls({ ...at, cert, key })
      : Deno.listen(at);
  } catch (err) {
    const why = err instanceof Deno.errors.AddrInUse
      ? "the address is already in use (is another cluster manager running?)"
      : err instanceof Deno.errors.AddrNotAvailable
      ? "the address is not one of this machine's"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied (ports below 1024 need root)"
      : (err as Error).message;
    throw new TypeError(`Cannot listen on ${text}: ${why}`);
  }
}

/** Open files this process may have, from /proc/self/limits (undefined when unknown). */
export function openFileLimit(limits = "/proc/self/limits"): number | undefined {
  try {
    const m = Deno.readTextFileSync(limits).match(/^Max open files\s+(\d+|unlimited)/m);
    if (m === null) return undefined;
    return m[1] === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(m[1]);
  } catch {
    return undefined;
  }
}

/**
 * The connection bound that leaves files for the store, etcd and logs:
 * the default, or the open-file limit less 256 when that is lower.
 */
function fitToFileLimit(logger: Logger): Partial<HttpLimits> {
  const files = openFileLimit();
  if (files === undefined || files - 256 >= DEFAULT_LIMITS.maxConnections) return {};
  const maxConnections = Math.max(64, files - 256);
  logger.warn(
    "The open-file limit is {files}: serving at most {max} connections (raise it, e.g. LimitNOFILE=65536, for more nodes)",
    { files, max: maxConnections },
  );
  return { maxConnections };
}

function readPem(path: string, flag: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    throw new TypeError(`Cannot read ${flag} ${path}: ${(err as Error).message}`);
  }
}
