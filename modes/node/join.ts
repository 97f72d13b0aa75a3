/**
 * `wgcni node join`: register, set up the node interface, serve the local
 * API, and follow the cluster's peer stream. The data plane never depends
 * on the cluster manager being up: once the node is set up, losing the
 * manager only pauses peer updates.
 */
import { AuthError, PoolExhaustedError } from "../../lib/errors.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import type { Logger } from "../../lib/log.ts";
import { WireGuardControl } from "../../lib/wireguard/mod.ts";
import {
  checkTransport,
  type ClusterClient,
  createClusterClient,
} from "../../lib/api/cluster_client.ts";
import type { RegisterResponse } from "../../lib/api/cluster_types.ts";
import { createLocalApp } from "../../lib/api/local_app.ts";
import type { CniErrorBody, CniRequest, CniResult } from "../../lib/api/local_types.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import { loadCredential, loadOrCreateKey, saveCredential } from "./key.ts";
import { defaultEndpointAddress, defaultMtu, gatewayOf, setupNodeNetwork } from "./netsetup.ts";
import { PodManager } from "./pods.ts";
import { openPodAddresses } from "./addresses.ts";
import { Mesh } from "./mesh.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import { installCni } from "./conflist.ts";
import { ClusterMemory, ClusterMismatchError } from "./cluster_memory.ts";
import type { PortRule } from "../../lib/ip/nft.ts";

/** Everything `wgcni node join` is told. */
export interface JoinConfig {
  readonly urls: readonly string[];
  readonly token: string | undefined;
  readonly name: string;
  readonly endpoint: string | undefined;
  readonly iface: string;
  readonly listenPort: number;
  readonly stateDir: string;
  readonly keyDir: string;
  readonly socket: string;
  readonly cniConfDir: string;
  readonly cniBinDir: string;
  readonly masquerade: readonly (4 | 6)[];
  /** Families whose pods accept from outside the pools only connections they started. */
  readonly ingressFilter: readonly (4 | 6)[];
  /** Ports pods may reach in the node's namespace. */
  readonly podOpenPorts: readonly PortRule[];
  readonly mtu: number | undefined;
  readonly caCert: string | undefined;
  /** Allows plain HTTP to a manager that is not on loopback. */
  readonly insecure: boolean;
}

/** Retry delays: 0.2 s doubling to 5 s, with jitter. */
export function backoff(attempt: number): number {
  const base = Math.min(5000, 200 * 2 ** Math.min(attempt, 5));
  return base / 2 + Math.random() * base / 2;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    }, { once: true });
  });

/** Normalises `IP[:PORT]` to an endpoint with a port. */
export function endpointWithPort(value: string, port: number): string {
  if (/^\[.*\]:\d+$/.test(value) || /^[\d.]+:\d+$/.test(value)) return value;
  return value.includes(":") ? `[${value}]:${port}` : `${value}:${port}`;
}

/** Runs the node manager until SIGTERM/SIGINT (or `signal`); returns the exit code. */
export async function join(
  config: JoinConfig,
  io: { logger: Logger; runner?: Runner; signal?: AbortSignal },
): Promise<number> {
  const log = io.logger;
  for (const url of config.urls) {
    checkTransport(url, { insecure: config.insecure, flag: "the cluster URL" });
  }
  const runner = io.runner ?? new SystemRunner();
  const clientFor = (url: string, token: string): ClusterClient =>
    createClusterClient(url, { token, ...(config.caCert ? { caCert: config.caCert } : {}) });
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  io.signal?.addEventListener("abort", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);

  const key = await loadOrCreateKey(config.keyDir);
  log.info("node {name} key {key}", { name: config.name, key: key.publicKey });
  const endpointIp = config.endpoint ?? await defaultEndpointAddress(runner);
  if (!endpointIp) {
    throw new Error("Cannot find this node's underlay address: no default route; pass --endpoint");
  }
  const endpoint = endpointWithPort(endpointIp, config.listenPort);
  const mtu = config.mtu ?? await defaultMtu(runner);

  await Deno.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const db = openDatabase(`${config.stateDir}/node.db`);
  const store = new NodeStateStore(db);

  /** Throws ClusterMismatchError unless the manager at `url` answers for this node's cluster. */
  const sameCluster = async (url: string) => {
    const c = clientFor(url, "");
    try {
      memory.accept(await c.clusterId(), url);
    } finally {
      c.close();
    }
  };

  // Registration: retried with backoff until a manager answers.
  let reg: RegisterResponse | undefined;
  let credential = await loadCredential(config.keyDir);
  const cached = store.meta("registration");
  const memory = new ClusterMemory(
    store,
    credential?.clusterId ??
      (cached ? (JSON.parse(cached) as RegisterResponse).cluster.id : undefined),
  );
  for (let attempt = 0; !reg && !stop.signal.aborted; attempt++) {
    const useCred = credential && credential.name === config.name
      ? credential.credential
      : undefined;
    const token = useCred ?? config.token;
    if (!token) throw new Error("Cannot register: no --token and no stored node credential");
    const url = config.urls[attempt % config.urls.length] as string;
    const client: ClusterClient = clientFor(url, token);
    try {
      const answer = await client.register({
        name: config.name,
        publicKey: key.publicKey,
        endpoint,
      });
      memory.accept(answer.cluster.id, url);
      reg = answer;
    } catch (err) {
      if (err instanceof ClusterMismatchError) {
        // Another cluster's manager: none of its answer is used. A node that
        // registered before keeps serving from its state.
        if (!cached) throw err;
        log.error("{error}", { error: err.message });
        reg = JSON.parse(cached) as RegisterResponse;
        break;
      }
      if (err instanceof AuthError && useCred && config.token) {
        // Refused by this node's own cluster, or by a manager of another one
        // (whose join token then must not register this node there).
        try {
          await sameCluster(url);
        } catch (e) {
          if (!(e instanceof ClusterMismatchError) || !cached) throw e;
          log.error("{error}", { error: e.message });
          reg = JSON.parse(cached) as RegisterResponse;
          break;
        }
        log.warn("stored credential refused; registering again with the join token");
        credential = undefined;
        continue;
      }
      if (
        err instanceof AuthError || err instanceof TypeError || err instanceof PoolExhaustedError
      ) {
        throw new Error(`Cannot register with ${url}: ${(err as Error).message}`);
      }
      // The manager is down. A node that registered before keeps serving from its state.
      if (cached) {
        reg = JSON.parse(cached) as RegisterResponse;
        log.warn("cluster manager unreachable ({error}); starting from the last registration", {
          error: err,
        });
        break;
      }
      log.info("cannot reach {url} yet: {error}", { url, error: err });
      await sleep(backoff(attempt), stop.signal);
    } finally {
      client.close();
    }
  }
  if (!reg) return 0;
  if (reg.credential) {
    credential = {
      name: config.name,
      credential: reg.credential,
      clusterUrls: config.urls,
      ...(memory.id !== undefined ? { clusterId: memory.id } : {}),
    };
    await saveCredential(config.keyDir, credential);
  }
  store.setMeta("registration", JSON.stringify({ ...reg, credential: "" }));
  const subnets = reg.node.subnets;
  log.info("registered: subnets {subnets}", { subnets });

  const wg = new WireGuardControl(runner, { logger: log });
  const net = await setupNodeNetwork({
    runner,
    wg,
    logger: log,
    iface: config.iface,
    privateKey: key.privateKey,
    publicKey: key.publicKey,
    listenPort: config.listenPort,
    mtu,
    subnets,
    podCidrs: reg.cluster.podCidrs,
    clientCidrs: reg.cluster.clientCidrs,
    masquerade: config.masquerade,
    ingressFilter: config.ingressFilter,
    podOpenPorts: config.podOpenPorts,
  });

  const addresses = openPodAddresses(db, subnets);
  const pods = new PodManager({
    runner,
    wg,
    logger: log,
    store,
    addresses,
    nodeInterface: config.iface,
    nodePublicKey: key.publicKey,
    nodeListenPort: (await wg.show(config.iface)).listenPort,
    mtu,
  });
  const rec = await pods.reconcile();
  if (Object.values(rec).some((n) => n > 0)) log.info("reconciled pods: {rec}", { rec });
  pods.sweepWhileRecovered(stop.signal);

  const mesh = new Mesh({
    wg,
    iface: config.iface,
    self: { name: config.name, publicKey: key.publicKey, subnets },
    logger: log,
    podKeys: () => pods.podKeys(),
    prime: (peer) => {
      const gateway = peer.allowedIps[0] && gatewayOf(peer.allowedIps[0]);
      if (gateway) runner.exec(["ping", "-c", "1", "-W", "1", "-q", gateway]).catch(() => {});
    },
  });
  let connected = false;

  const app = createLocalApp({
    add: (req) => pods.add(podRequest(req)),
    del: (req) => pods.del(req),
    check: (req) => pods.check(podRequest(req)),
    status: async () => {
      if (!(await wg.exists(config.iface))) {
        return { code: ERR.statusCantAdd, msg: `The node interface ${config.iface} is missing` };
      }
      if (addresses.free() <= 0n) {
        return {
          code: ERR.statusCantAdd,
          msg: `No free pod addresses left in ${subnets.join(", ")}`,
        };
      }
      return undefined;
    },
    gc: async (valid) => valid === undefined ? { released: [], failed: [] } : await pods.gc(valid),
    node: () =>
      Promise.resolve({
        name: config.name,
        publicKey: key.publicKey,
        endpoint,
        interface: config.iface,
        backend: net.backend,
        listenPort: config.listenPort,
        mtu,
        subnets,
        gateways: subnets.map(gatewayOf),
        cluster: reg.cluster,
        clusterUrls: config.urls,
        connected,
        revision: mesh.revision,
        meshOperations: mesh.applied,
      }),
    peers: async () => {
      const state = await wg.show(config.iface);
      const names = new Map(mesh.peers.map((p) => [p.publicKey, `${p.kind}/${p.name}`]));
      const podNames = new Map([
        ...pods.recovered().map((p) => [p.publicKey, "pod/(recovered)"] as const),
        ...store.all().map((p) => [p.publicKey, `pod/${p.containerId}/${p.ifname}`] as const),
      ]);
      return {
        peers: state.peers.map((p) => ({
          ...p,
          name: names.get(p.publicKey) ?? podNames.get(p.publicKey) ?? "unknown",
        })),
      };
    },
    allocations: () =>
      Promise.resolve({
        subnets,
        free: addresses.free().toString(),
        pods: store.all().map((p) => ({
          containerId: p.containerId,
          ifname: p.ifname,
          netns: p.netns,
          phase: p.phase,
          addresses: p.addresses,
          publicKey: p.publicKey,
        })),
        recovered: pods.recovered(),
      }),
  }, mapError);

  await Deno.mkdir(config.socket.replace(/\/[^/]*$/, "") || "/", { recursive: true, mode: 0o755 });
  await Deno.remove(config.socket).catch(() => {});
  const server = Deno.serve({
    path: config.socket,
    signal: stop.signal,
    onListen() {},
  }, app.fetch);
  await Deno.chmod(config.socket, 0o600);
  await installCni({ confDir: config.cniConfDir, binDir: config.cniBinDir, socket: config.socket });
  log.info("local API on {socket}; ready", { socket: config.socket });

  // The peer stream: on a lost or refused stream, the next URL in turn (the
  // first switch at once, then with backoff), resuming from the last revision
  // applied; the interface and its peers stay as they are meanwhile.
  let current = 0;
  const watchLoop = async () => {
    let since: number | undefined = undefined;
    let refused = false;
    for (let attempt = 0; !stop.signal.aborted;) {
      const url = config.urls[current] as string;
      const client = clientFor(url, credential?.credential ?? config.token ?? "");
      try {
        const opened = () => {
          if (!connected) log.info("following peers from {url}", { url });
          connected = true;
          attempt = 0;
        };
        for await (const event of client.watch(since, stop.signal, { onOpen: opened })) {
          // A snapshot behind what was applied comes from a store that lost changes.
          if (event.type === "snapshot") memory.checkSnapshot(event.revision, url);
          opened();
          await mesh.apply(event);
          since = mesh.revision;
          memory.applied(mesh.revision);
        }
      } catch (err) {
        if (stop.signal.aborted) break;
        if (err instanceof ClusterMismatchError) {
          log.error("{error}", { error: err.message });
          refused = true;
        } else if (err instanceof AuthError && config.token) {
          // Removed by an admin or expired: join again with the same key.
          log.warn("node credential refused; registering again");
          try {
            await sameCluster(url);
            const again = await clientFor(url, config.token).register({
              name: config.name,
              publicKey: key.publicKey,
              endpoint,
            });
            memory.accept(again.cluster.id, url);
            credential = {
              name: config.name,
              credential: again.credential,
              clusterUrls: config.urls,
              ...(memory.id !== undefined ? { clusterId: memory.id } : {}),
            };
            await saveCredential(config.keyDir, credential);
            since = undefined;
          } catch (e) {
            if (e instanceof ClusterMismatchError) {
              log.error("{error}", { error: e.message });
              refused = true;
            } else log.warn("cannot register again: {error}", { error: e });
          }
        } else {
          if (connected) {
            log.warn("lost the cluster manager at {url}: {error}", { url, error: err });
          }
        }
      } finally {
        client.close();
      }
      const wasConnected = connected;
      connected = false;
      current = (current + 1) % config.urls.length;
      attempt++;
      if (refused) {
        // Asked again now and then: the manager's store may be restored.
        refused = false;
        await sleep(10_000, stop.signal);
      } else if (!(wasConnected && config.urls.length > 1)) {
        await sleep(backoff(attempt), stop.signal);
      }
    }
  };
  // Lease renewal: the manager the stream follows first, then the others.
  const heartbeatLoop = async () => {
    while (!stop.signal.aborted) {
      await sleep(60_000, stop.signal);
      if (stop.signal.aborted || !credential) break;
      for (let i = 0; i < config.urls.length; i++) {
        const url = config.urls[(current + i) % config.urls.length] as string;
        const c = clientFor(url, credential.credential);
        try {
          await c.heartbeat(config.name);
          break;
        } catch (err) {
          log.debug("heartbeat to {url} failed: {error}", { url, error: err });
        } finally {
          c.close();
        }
      }
    }
  };
  await Promise.all([watchLoop(), heartbeatLoop(), server.finished]);
  memory.flush();
  Deno.removeSignalListener("SIGTERM", onSignal);
  Deno.removeSignalListener("SIGINT", onSignal);
  db.close();
  log.info("stopped; the interface and pods stay as they are");
  return 0;
}

function podRequest(req: CniRequest) {
  const prev = req.config.prevResult as CniResult | undefined;
  return {
    containerId: req.containerId,
    ifname: req.ifname,
    netns: req.netns,
    cniVersion: typeof req.config.cniVersion === "string" ? req.config.cniVersion : "1.1.0",
    ...(prev ? { prevResult: prev } : {}),
  };
}

function mapError(err: unknown): { status: 400 | 409 | 500 | 503; body: CniErrorBody } {
  if (err instanceof CniError) {
    const body = err.details === undefined
      ? { code: err.code, msg: err.message }
      : { code: err.code, msg: err.message, details: err.details };
    return { status: err.code >= 2 && err.code <= 7 ? 400 : 500, body };
  }
  if (err instanceof PoolExhaustedError) {
    return { status: 503, body: { code: ERR.poolExhausted, msg: err.message } };
  }
  return {
    status: 500,
    body: { code: ERR.internal, msg: err instanceof Error ? err.message : String(err) },
  };
}
