/**
 * The cluster API (`wgcni cluster serve`) as one Hono app. Routes are chained
 * so `typeof app` gives the typed client in cluster_client.ts; every route but
 * /healthz, /readyz and /metrics needs a bearer credential (see
 * cluster_types.ts for the table).
 */
import { Hono } from "hono";
import type { Context, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import { routePath } from "hono/route";
import { zValidator } from "@hono/zod-validator";
import type { z } from "zod";
import type { Logger } from "../log.ts";
import { AuthError, NotFoundError, TooLargeError } from "../errors.ts";
import { parseHostPort, unmappedAddress } from "../domain/address.ts";
import type {
  ClientInfo,
  ClientResponse,
  NodeInfo,
  NodeReport,
  PeerEntry,
  PeerSnapshot,
  RegisterResponse,
  TokenCreated,
  TokenInfo,
} from "./cluster_types.ts";
import {
  type ClusterStore,
  newSecret,
  nodePeer,
  type Principal,
  type TokenRecord,
} from "../store/cluster_store.ts";
import { codeOf, type ErrorBody, statusOf } from "./errors.ts";
import {
  clientSchema,
  describeIssues,
  heartbeatSchema,
  nameParamSchema,
  nextKeySchema,
  observedEndpointSchema,
  registerSchema,
  relaySchema,
  tokenIdParamSchema,
  tokenSchema,
  watchQuerySchema,
} from "./schemas.ts";
import { WatchHub } from "./cluster_watch_hub.ts";
import { RequestMetrics } from "./cluster_metrics.ts";
import type { ConnInfo, HttpStats } from "./http_server.ts";
import { buildInfo } from "../metrics.ts";
import { VERSION } from "../version.ts";
import { CLUSTER_HEADER } from "./cluster_types.ts";

/** Everything the app needs from its host. */
export interface ClusterAppOptions {
  readonly store: ClusterStore;
  readonly logger?: Logger;
  /** The clock, in ms since the epoch (token expiry, leases). */
  readonly now?: () => number;
  /** Keep-alive interval of watch streams (default 15 s). */
  readonly keepAliveMs?: number;
  /** Bytes a watch stream may fall behind before it is dropped (default 1 MiB). */
  readonly maxQueueBytes?: number;
  /** Watch streams one credential may hold (default 4); one more closes its oldest. */
  readonly maxWatchesPerCredential?: number;
  /** Aborting it ends every watch stream, so the server can shut down. */
  readonly signal?: AbortSignal;
  /** The HTTP server's counters, for /metrics (absent when no server runs the app). */
  readonly connectionStats?: () => HttpStats | undefined;
  /** The relay of `--relay-listen` (POST /v1/relay), when this manager runs one. */
  readonly relay?: RelayService;
  /** The relay's counters, for /metrics. */
  readonly relayStats?: () => RelayCounts;
}

/** A relay's counters (modes/cluster/relay.ts). */
export interface RelayCounts {
  readonly pairs: number;
  readonly packets: number;
  readonly bytes: number;
  readonly refused: number;
}

function relayFamilies(s: RelayCounts | undefined) {
  if (s === undefined) return [];
  const one = (name: string, help: string, type: "gauge" | "counter", value: number) => ({
    name,
    help,
    type,
    samples: [{ value }],
  });
  return [
    one("wgcni_cluster_relay_pairs", "Node pairs the relay carries.", "gauge", s.pairs),
    one("wgcni_cluster_relay_packets_total", "Packets the relay passed on.", "counter", s.packets),
    one("wgcni_cluster_relay_bytes_total", "Bytes the relay passed on.", "counter", s.bytes),
    one(
      "wgcni_cluster_relay_refused_total",
      "Packets dropped for coming from another address than the side's node.",
      "counter",
      s.refused,
    ),
  ];
}

/** What the API asks of a relay (modes/cluster/relay.ts). */
export interface RelayService {
  /** The endpoint `node` (seen at `host`) sends to for its pair with `other` (at `otherHost`). */
  endpointFor(node: string, host: string, other: string, otherHost: string): Promise<string>;
}

interface Env {
  Variables: { principal: Principal; secret: string };
}

const utf8 = new TextEncoder();

/** Largest request body accepted. */
const MAX_BODY_BYTES = 64 * 1024;

/** Turns a failed validation into a 400 that names the field and what is wrong with it. */
function invalid(what: string) {
  return (result: { success: boolean; error?: z.core.$ZodError }) => {
    if (!result.success && result.error !== undefined) {
      throw new TypeError(`${what}: ${describeIssues(result.error)}`);
    }
  };
}

/** Refuses a body that is not declared as JSON (the validator would read it as empty). */
const needsJson: MiddlewareHandler<Env> = async (c, next) => {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/([a-z0-9.+-]*\+)?json\b/i.test(type)) {
    throw new TypeError(
      `Cannot read the request: send a JSON body with Content-Type: application/json (got ${
        type === "" ? "none" : type
      })`,
    );
  }
  await next();
};

function bearer(c: Context): string {
  const header = c.req.header("authorization");
  if (header === undefined || header === "") {
    throw new AuthError("Cannot authenticate: send Authorization: Bearer TOKEN");
  }
  const m = header.match(/^Bearer\s+(\S+)\s*$/i);
  if (m === null) {
    throw new AuthError("Cannot authenticate: the Authorization header is not Bearer TOKEN");
  }
  return m[1]!;
}

function tokenProblem(token: TokenRecord, now: number): string | undefined {
  if (token.expiresAt !== null && token.expiresAt <= now) {
    return `the join token ${token.id} expired at ${new Date(token.expiresAt).toISOString()}`;
  }
  if (token.singleUse && token.used) {
    return `the single-use join token ${token.id} was already used`;
  }
  return undefined;
}

const KIND_NAMES: Record<Principal["kind"], string> = {
  admin: "the admin token",
  join: "a join token",
  node: "a node credential",
};

/** The principal a bearer secret stands for; AuthError (401) when none. */
function authenticate(store: ClusterStore, secret: string, now: number): Principal {
  const token = store.findToken(secret);
  if (token !== undefined) {
    if (token.kind === "admin") return { kind: "admin" };
    const problem = tokenProblem(token, now);
    if (problem !== undefined) throw new AuthError(`Cannot authenticate: ${problem}`);
    return { kind: "join", tokenId: token.id };
  }
  const node = store.findNodeByCredential(secret);
  if (node !== undefined) return { kind: "node", name: node.name };
  throw new AuthError("Cannot authenticate: the credential is not known to this cluster");
}

function tokenInfo(t: TokenRecord): TokenInfo {
  return {
    id: t.id,
    expiresAt: t.expiresAt,
    singleUse: t.singleUse,
    used: t.used,
    createdAt: t.createdAt,
  };
}

/** Refuses a node credential acting on another node (403). */
function mustBeSelfOrAdmin(p: Principal, name: string, what: string): void {
  if (p.kind === "admin") return;
  if (p.kind === "node" && p.name === name) return;
  const who = p.kind === "node" ? `node ${p.name}` : KIND_NAMES[p.kind];
  throw new AuthError(`Cannot ${what} node ${name}: ${who} may act only on itself`, {
    missing: false,
  });
}

/** The process's memory: resident, and what its live JavaScript objects take. */
function memoryFamilies() {
  const m = Deno.memoryUsage();
  return [
    {
      name: "process_resident_memory_bytes",
      help: "Resident memory of the process.",
      samples: [{ value: m.rss }],
    },
    {
      name: "wgcni_cluster_heap_used_bytes",
      help: "JavaScript heap in use by live objects (the resident size also holds free heap).",
      samples: [{ value: m.heapUsed }],
    },
  ];
}

/** The HTTP server's counters as metric families (none without a server). */
function connectionFamilies(stats: HttpStats | undefined) {
  if (stats === undefined) return [];
  const counter = (name: string, help: string, value: number) => ({
    name,
    help,
    type: "counter" as const,
    samples: [{ value }],
  });
  return [
    {
      name: "wgcni_cluster_connections",
      help: "Open connections.",
      samples: [{ value: stats.open }],
    },
    counter("wgcni_cluster_connections_accepted_total", "Connections accepted.", stats.accepted),
    counter(
      "wgcni_cluster_connections_refused_total",
      "Connections closed at once: over the total or per-source bound.",
      stats.refused,
    ),
    counter(
      "wgcni_cluster_connections_timed_out_total",
      "Connections closed for a slow request head or body, idleness or a write not taken.",
      stats.timedOut,
    ),
    counter(
      "wgcni_cluster_requests_rejected_total",
      "Requests refused before routing (malformed, or a line, head or body over its bound).",
      stats.rejected,
    ),
    counter(
      "wgcni_cluster_accept_errors_total",
      "Failed accepts (such as running out of file descriptors).",
      stats.acceptErrors,
    ),
  ];
}

/** Builds the cluster API over a store. */
export function createClusterApp(options: ClusterAppOptions) {
  const { store, logger } = options;
  const now = options.now ?? Date.now;
  const metrics = new RequestMetrics();
  const hub = new WatchHub(store, {
    ...(logger ? { logger } : {}),
    ...(options.keepAliveMs !== undefined ? { keepAliveMs: options.keepAliveMs } : {}),
    ...(options.maxQueueBytes !== undefined ? { maxQueueBytes: options.maxQueueBytes } : {}),
    ...(options.maxWatchesPerCredential !== undefined
      ? { maxStreamsPerOwner: options.maxWatchesPerCredential }
      : {}),
  });
  options.signal?.addEventListener("abort", () => hub.close(), { once: true });
  let clusterId: string | undefined;
  const clusterInfo = () => ({
    id: clusterId ??= store.getFlag("cluster-id") ?? "",
    podCidrs: store.pools.podCidrs,
    clientCidrs: store.pools.clientCidrs,
  });
  /** The last peer snapshot as sent (UTF-8), with the revision it is of. */
  let peersBody: { revision: number; bytes: Uint8Array<ArrayBuffer> } | undefined;

  /** Lets through the listed kinds of principal; 401 without a credential, 403 for another kind. */
  const auth = (...allowed: Principal["kind"][]): MiddlewareHandler<Env> => async (c, next) => {
    const secret = bearer(c);
    const principal = authenticate(store, secret, now());
    if (!allowed.includes(principal.kind)) {
      throw new AuthError(
        `Cannot ${c.req.method} ${routePath(c, -1)}: ${
          KIND_NAMES[principal.kind]
        } is not allowed here (needs ${allowed.map((k) => KIND_NAMES[k]).join(" or ")})`,
        { missing: false },
      );
    }
    c.set("principal", principal);
    c.set("secret", secret);
    await next();
  };

  const app = new Hono<Env>()
    .use(async (c, next) => {
      const t0 = performance.now();
      await next();
      // Every answer, refusals included, says which cluster this is.
      clusterId ??= store.getFlag("cluster-id");
      if (clusterId !== undefined) c.res.headers.set(CLUSTER_HEADER, clusterId);
      metrics.observe(
        c.req.method,
        routePath(c, -1),
        c.res.status,
        (performance.now() - t0) / 1000,
      );
    })
    .use(bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: () => {
        throw new TooLargeError(
          `Cannot read the request: the body is over ${MAX_BODY_BYTES} bytes`,
        );
      },
    }))
    .get("/healthz", (c) => c.text("ok\n"))
    .get("/readyz", async (c) => {
      try {
        await store.ping();
        return c.text("ready\n");
      } catch (err) {
        return c.text(`not ready: ${(err as Error).message}\n`, 503);
      }
    })
    .get("/metrics", (c) => {
      const usage = store.usage();
      const peers = store.snapshot().peers;
      const nodeCount = peers.filter((p) => p.kind === "node").length;
      const text = metrics.render([
        {
          name: "wgcni_cluster_nodes",
          help: "Registered nodes.",
          samples: [{ value: nodeCount }],
        },
        {
          name: "wgcni_cluster_clients",
          help: "Registered external clients.",
          samples: [{ value: peers.length - nodeCount }],
        },
        {
          name: "wgcni_cluster_pool_used",
          help: "Subnets (pod pools) or addresses (client pools) in use or in their grace period.",
          samples: usage.map((u) => ({
            labels: { pool: u.pool, family: `ipv${u.family}`, cidr: u.cidr },
            value: u.used,
          })),
        },
        {
          name: "wgcni_cluster_pool_size",
          help: "Subnets (pod pools) or addresses (client pools) a pool holds.",
          samples: usage.map((u) => ({
            labels: { pool: u.pool, family: `ipv${u.family}`, cidr: u.cidr },
            value: u.total,
          })),
        },
        {
          name: "wgcni_cluster_watchers",
          help: "Open watch streams.",
          samples: [{ value: hub.size }],
        },
        {
          name: "wgcni_cluster_revision",
          help: "Revision of the last peer change.",
          samples: [{ value: store.revision() }],
        },
        {
          name: "wgcni_cluster_store_conflicts_total",
          help: "Store writes planned again because another writer changed what they read.",
          type: "counter",
          samples: [{ value: store.stats().conflicts }],
        },
        {
          name: "wgcni_cluster_watch_bytes_total",
          help: "Bytes queued on watch streams.",
          type: "counter",
          samples: [{ value: hub.stats.bytes }],
        },
        {
          name: "wgcni_cluster_watch_dropped_total",
          help: "Watch streams closed because they stopped reading.",
          type: "counter",
          samples: [{ value: hub.stats.dropped }],
        },
        {
          name: "wgcni_cluster_watch_replaced_total",
          help: "Watch streams closed because their credential opened more than its share.",
          type: "counter",
          samples: [{ value: hub.stats.replaced }],
        },
        ...connectionFamilies(options.connectionStats?.()),
        ...relayFamilies(options.relayStats?.()),
        ...memoryFamilies(),
        buildInfo(VERSION),
      ]);
      return c.text(text, 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
    })
    .post(
      "/v1/nodes",
      auth("join", "node", "admin"),
      needsJson,
      zValidator("json", registerSchema, invalid("Cannot register node")),
      async (c) => {
        const req = c.req.valid("json");
        const principal = c.get("principal");
        // A node that shows its credential keeps it; any other caller gets a new one
        // (the store's rules refuse a node credential for another name).
        const credential = principal.kind === "node" ? c.get("secret") : newSecret();
        // A replica behind the node's revision catches up before the rules compare them.
        if (req.revision !== undefined && req.revision > store.revision()) await store.settle();
        // Where the request came from: a node behind NAT is seen from its NAT's address.
        const seenFrom = seenAddress(c.env as ConnInfo | undefined);
        const outcome = await store.registerNode(
          { ...req, ...(seenFrom !== undefined ? { seenFrom } : {}) },
          { principal, credential, now: now() },
        );
        await store.committed();
        logger?.info("Registered node {name}", {
          name: outcome.node.name,
          subnets: outcome.node.subnets,
          created: outcome.created,
        });
        const body: RegisterResponse = {
          node: outcome.node,
          credential,
          cluster: clusterInfo(),
        };
        return c.json(body, outcome.created ? 201 : 200);
      },
    )
    .get("/v1/nodes", auth("admin"), (c) => {
      const nodes: readonly NodeInfo[] = store.listNodes();
      return c.json({ nodes }, 200);
    })
    .get(
      "/v1/nodes/:name",
      auth("node", "admin"),
      zValidator("param", nameParamSchema, invalid("Cannot read node")),
      (c) => {
        const { name } = c.req.valid("param");
        mustBeSelfOrAdmin(c.get("principal"), name, "read");
        const node = store.getNode(name);
        if (node === undefined) return c.json({ error: `node ${name} is not registered` }, 404);
        return c.json({ node }, 200);
      },
    )
    .delete(
      "/v1/nodes/:name",
      auth("node", "admin"),
      zValidator("param", nameParamSchema, invalid("Cannot remove node")),
      async (c) => {
        const { name } = c.req.valid("param");
        mustBeSelfOrAdmin(c.get("principal"), name, "remove");
        await store.removeNode(name, now());
        logger?.info("Removed node {name}", { name, by: c.get("principal").kind });
        return c.body(null, 204);
      },
    )
    .post(
      "/v1/nodes/:name/reset",
      auth("admin"),
      zValidator("param", nameParamSchema, invalid("Cannot reset node")),
      async (c) => {
        const { name } = c.req.valid("param");
        const node = await store.resetNode(name, now());
        logger?.warn("Reset node {name}: its credential is revoked; a join token may register it", {
          name,
        });
        return c.json({ node }, 200);
      },
    )
    .post(
      "/v1/nodes/:name/endpoint",
      auth("node", "admin"),
      needsJson,
      zValidator("param", nameParamSchema, invalid("Cannot record the endpoint")),
      zValidator("json", observedEndpointSchema, invalid("Cannot record the endpoint")),
      async (c) => {
        const { name } = c.req.valid("param");
        const { endpoint } = c.req.valid("json");
        const before = store.getNode(name)?.endpoint;
        const node = await store.observeEndpoint(name, endpoint, c.get("principal"));
        await store.committed();
        if (before !== node.endpoint) {
          logger?.info("Node {name} is behind NAT; seen at {endpoint}", { name, endpoint });
        }
        return c.json({ node }, 200);
      },
    )
    .post(
      "/v1/nodes/:name/key",
      auth("node"),
      needsJson,
      zValidator("param", nameParamSchema, invalid("Cannot announce the next key")),
      zValidator("json", nextKeySchema, invalid("Cannot announce the next key")),
      async (c) => {
        const { name } = c.req.valid("param");
        const next = c.req.valid("json");
        const node = await store.announceKey(name, next, {
          principal: c.get("principal"),
          now: now(),
        });
        await store.committed();
        logger?.info("Node {name} switches to key {key} at {at}", {
          name,
          key: next.publicKey,
          at: new Date(next.switchAt).toISOString(),
        });
        return c.json({ node }, 200);
      },
    )
    .post(
      "/v1/relay",
      auth("node"),
      needsJson,
      zValidator("json", relaySchema, invalid("Cannot relay")),
      async (c) => {
        const { peer } = c.req.valid("json");
        const principal = c.get("principal");
        const name = principal.kind === "node" ? principal.name : "";
        if (options.relay === undefined) {
          throw new NotFoundError(
            "Cannot relay: this cluster manager runs no relay (cluster serve --relay-listen)",
          );
        }
        if (peer === name) throw new TypeError("Cannot relay: peer: is this node itself");
        const self = store.getNode(name), other = store.getNode(peer);
        if (self === undefined || other === undefined) {
          throw new NotFoundError(`Cannot relay to node ${peer}: it is not registered`);
        }
        const endpoint = await options.relay.endpointFor(
          name,
          parseHostPort(self.endpoint).host,
          peer,
          parseHostPort(other.endpoint).host,
        );
        return c.json({ endpoint }, 200);
      },
    )
    .post(
      "/v1/nodes/:name/heartbeat",
      auth("node", "admin"),
      zValidator("param", nameParamSchema, invalid("Cannot renew the lease")),
      async (c) => {
        const { name } = c.req.valid("param");
        mustBeSelfOrAdmin(c.get("principal"), name, "renew the lease of");
        // A node may say how it is: its pod count and readiness (a JSON body).
        const text = await c.req.text();
        let report: NodeReport | undefined;
        if (text !== "") {
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            throw new TypeError("Cannot renew the lease: the body is not JSON");
          }
          const r = heartbeatSchema.safeParse(json);
          if (!r.success) {
            throw new TypeError(`Cannot renew the lease: ${describeIssues(r.error)}`);
          }
          report = r.data;
        }
        const node = await store.heartbeat(name, now(), report);
        await store.committed();
        return c.json({ node }, 200);
      },
    )
    .get("/v1/peers", auth("node", "admin"), (c) => {
      // Every node asks for the same bytes between two changes: encode once per revision.
      const revision = store.revision();
      if (peersBody?.revision !== revision) {
        const snap: PeerSnapshot = store.snapshot();
        peersBody = { revision: snap.revision, bytes: utf8.encode(JSON.stringify(snap)) };
      }
      return c.body(peersBody.bytes, 200, { "content-type": "application/json" });
    })
    .get(
      "/v1/watch",
      auth("node", "admin"),
      zValidator("query", watchQuerySchema, invalid("Cannot watch")),
      async (c) => {
        const { since } = c.req.valid("query");
        const principal = c.get("principal");
        // A replica that lags behind the one the node came from catches up
        // first, so the node resumes instead of taking an older snapshot.
        if (since !== undefined && since > store.revision()) await store.settle();
        const { stream, start } = hub.open(
          since,
          principal.kind === "node" ? { node: principal.name } : { owner: principal.kind },
        );
        logger?.debug("Watch stream opened", { since, start, watchers: hub.size });
        return c.body(stream, 200, {
          "content-type": "text/event-stream",
          "cache-control": "no-cache",
          // Proxies such as nginx buffer responses unless told not to.
          "x-accel-buffering": "no",
        });
      },
    )
    .post(
      "/v1/clients",
      auth("admin"),
      needsJson,
      zValidator("json", clientSchema, invalid("Cannot add client")),
      async (c) => {
        const req = c.req.valid("json");
        const client = await store.addClient(req, now());
        logger?.info("Added client {name}", { name: client.name, addresses: client.addresses });
        const nodes: readonly PeerEntry[] = store.listNodes().map(nodePeer);
        const body: ClientResponse = {
          client,
          nodes,
          cluster: clusterInfo(),
        };
        return c.json(body, 201);
      },
    )
    .get("/v1/clients", auth("admin"), (c) => {
      const clients: readonly ClientInfo[] = store.listClients();
      return c.json({ clients }, 200);
    })
    .get(
      "/v1/clients/:name",
      auth("admin"),
      zValidator("param", nameParamSchema, invalid("Cannot read client")),
      (c) => {
        const { name } = c.req.valid("param");
        const client = store.getClient(name);
        if (client === undefined) {
          throw new NotFoundError(`Cannot read client ${name}: no such client`);
        }
        // What a refreshed configuration needs: the client and every node as of now.
        const body: ClientResponse = {
          client,
          nodes: store.listNodes().map(nodePeer),
          cluster: clusterInfo(),
        };
        return c.json(body, 200);
      },
    )
    .delete(
      "/v1/clients/:name",
      auth("admin"),
      zValidator("param", nameParamSchema, invalid("Cannot remove client")),
      async (c) => {
        const { name } = c.req.valid("param");
        await store.removeClient(name);
        logger?.info("Removed client {name}", { name });
        return c.body(null, 204);
      },
    )
    .post(
      "/v1/tokens",
      auth("admin"),
      needsJson,
      zValidator("json", tokenSchema, invalid("Cannot create token")),
      async (c) => {
        const req = c.req.valid("json");
        const secret = newSecret();
        const record = await store.createToken({
          secret,
          now: now(),
          ...(req.ttlSeconds !== undefined ? { ttlMs: req.ttlSeconds * 1000 } : {}),
          ...(req.singleUse !== undefined ? { singleUse: req.singleUse } : {}),
        });
        logger?.info("Created join token {id}", { id: record.id, expiresAt: record.expiresAt });
        const body: TokenCreated = { ...tokenInfo(record), token: secret };
        return c.json(body, 201);
      },
    )
    .get("/v1/tokens", auth("admin"), (c) => {
      const tokens: readonly TokenInfo[] = store.listTokens().map(tokenInfo);
      return c.json({ tokens }, 200);
    })
    .delete(
      "/v1/tokens/:id",
      auth("admin"),
      zValidator("param", tokenIdParamSchema, invalid("Cannot revoke token")),
      async (c) => {
        const { id } = c.req.valid("param");
        await store.revokeToken(id);
        logger?.info("Revoked join token {id}", { id });
        return c.body(null, 204);
      },
    );

  app.notFound((c) => c.json({ error: `No route ${c.req.method} ${c.req.path}` }, 404));
  app.onError((err, c) => {
    if (err instanceof HTTPException) {
      const body: ErrorBody = { error: err.message || `HTTP ${err.status}` };
      return c.json(body, err.status);
    }
    const status = statusOf(err);
    if (status === 500) {
      logger?.error("Request failed: {error}", { error: err, route: routePath(c, -1) });
    } else if (status >= 500) {
      logger?.warn("Request refused: {error}", { error: err, route: routePath(c, -1) });
    }
    const code = codeOf(err);
    const body: ErrorBody = {
      error: status === 500 ? `Internal error: ${err.message}` : err.message,
      ...(code !== undefined ? { code } : {}),
    };
    return c.json(body, status);
  });
  return app;
}

/** The type of the cluster API app, for `hc<ClusterApp>`. */
export type ClusterApp = ReturnType<typeof createClusterApp>;

/** The address a request came from (an IPv4-mapped IPv6 address as IPv4), when known. */
export function seenAddress(info: ConnInfo | undefined): string | undefined {
  const host = info?.remoteAddr?.hostname;
  return host === undefined || host === "" ? undefined : unmappedAddress(host);
}
