/**
 * A cluster API without a port for tests: a real SQLite store in a temp dir,
 * the Hono app, a settable clock, known bootstrap tokens, and typed clients
 * whose requests go to `app.request`.
 */
import { createClusterApp, type RelayService } from "../../lib/api/cluster_app.ts";
import { ClusterClient } from "../../lib/api/cluster_client.ts";
import { getLogger } from "../../lib/log.ts";
import type { ClusterStore, PoolConfig } from "../../lib/store/cluster_store.ts";
import { normalizePools } from "../../lib/store/cluster_pools.ts";
import { openClusterState } from "../../modes/cluster/state.ts";
import { bootstrapTokens } from "../../modes/cluster/bootstrap.ts";

export const ADMIN = "admin-token-for-tests-0001";
export const JOIN = "join-token-for-tests-00001";
export const BASE = "http://cluster.test";

export const DEFAULT_POOLS: PoolConfig = {
  podCidrs: ["10.244.0.0/16", "fd00:10:244::/56"],
  clientCidrs: ["100.64.0.0/24", "fd00:64::/120"],
  nodeMaskV4: 24,
  nodeMaskV6: 64,
};

/** A random WireGuard-shaped public key (base64 of 32 bytes). */
export function randomKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes));
}

export interface Fixture extends AsyncDisposable {
  readonly dir: string;
  readonly store: ClusterStore;
  /** Which store the fixture runs on. */
  readonly kind: "sqlite" | "etcd";
  readonly app: ReturnType<typeof createClusterApp>;
  /** The test clock (ms). */
  now: number;
  /** A typed client with this credential; its requests come from `from` when given (the peer address). */
  client(token: string, from?: string): ClusterClient;
  /** A raw request to the app (for inputs the typed client cannot express). */
  raw(
    method: string,
    path: string,
    options?: { token?: string; body?: string; json?: unknown },
  ): Promise<Response>;
}

/**
 * The store tests run on: the embedded SQLite store, or etcd when
 * WGCNI_TEST_STORE=etcd and WGCNI_TEST_ETCD names the endpoints (the test
 * runner starts an etcd for that run). Each etcd fixture has its own prefix.
 */
export const STORE_KIND: "sqlite" | "etcd" = Deno.env.get("WGCNI_TEST_STORE") === "etcd"
  ? "etcd"
  : "sqlite";

export async function clusterFixture(
  options: {
    pools?: PoolConfig;
    graceMs?: number;
    historyLimit?: number;
    keepAliveMs?: number;
    maxQueueBytes?: number;
    relay?: RelayService;
  } = {},
): Promise<Fixture> {
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-cluster-test-" });
  const settings = {
    pools: normalizePools(options.pools ?? DEFAULT_POOLS),
    graceMs: options.graceMs ?? 3_600_000,
    logger: getLogger("test"),
    ...(options.historyLimit !== undefined ? { historyLimit: options.historyLimit } : {}),
  };
  let store: ClusterStore;
  let dropPrefix = () => Promise.resolve();
  if (STORE_KIND === "etcd") {
    const endpoints = (Deno.env.get("WGCNI_TEST_ETCD") ?? "").split(",").filter((e) => e);
    if (endpoints.length === 0) throw new Error("WGCNI_TEST_STORE=etcd needs WGCNI_TEST_ETCD");
    const { EtcdClusterStore, connect } = await import("../../lib/store/cluster_etcd.ts");
    const prefix = `/wgcni-test-${crypto.randomUUID()}/`;
    store = await EtcdClusterStore.open({ endpoints, prefix, ...settings });
    dropPrefix = async () => {
      const c = connect({ endpoints });
      await c.delete().prefix(prefix);
      c.close();
    };
  } else {
    // As `cluster serve` runs it: registrations and renewals commit in groups.
    store = openClusterState(dir, { ...settings, groupCommit: true });
  }
  const stop = new AbortController();
  const fx: Fixture = {
    dir,
    store,
    kind: STORE_KIND,
    now: 1_700_000_000_000,
    app: undefined as unknown as ReturnType<typeof createClusterApp>,
    client: (token, from) =>
      new ClusterClient(BASE, {
        token,
        fetch: (input, init) =>
          Promise.resolve(
            fx.app.request(
              input,
              init,
              from === undefined
                ? undefined
                : { remoteAddr: { hostname: from, port: 40000, transport: "tcp" } },
            ),
          ),
      }),
    raw: (method, path, o = {}) => {
      const headers: Record<string, string> = {};
      if (o.token !== undefined) headers["authorization"] = `Bearer ${o.token}`;
      let body: string | undefined = o.body;
      if (o.json !== undefined) body = JSON.stringify(o.json);
      if (body !== undefined) headers["content-type"] = "application/json";
      return Promise.resolve(
        fx.app.request(`${BASE}${path}`, {
          method,
          headers,
          ...(body !== undefined ? { body } : {}),
        }),
      );
    },
    [Symbol.asyncDispose]: async () => {
      stop.abort();
      await store.close();
      await dropPrefix();
      Deno.removeSync(dir, { recursive: true });
    },
  };
  await bootstrapTokens(store, { dataDir: dir, adminToken: ADMIN, joinToken: JOIN, now: fx.now });
  (fx as { app: unknown }).app = createClusterApp({
    store,
    now: () => fx.now,
    signal: stop.signal,
    keepAliveMs: options.keepAliveMs ?? 60_000,
    ...(options.maxQueueBytes !== undefined ? { maxQueueBytes: options.maxQueueBytes } : {}),
    ...(options.relay !== undefined ? { relay: options.relay } : {}),
  });
  return fx;
}
