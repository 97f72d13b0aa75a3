/**
 * `wgcni node join`: the node manager's wiring. It registers (cluster_link),
 * sets up the node interface (netsetup), reconciles pods (pods), serves the
 * local API (local_handlers) and follows the cluster's peer stream
 * (peer_source) into the mesh (mesh). The data plane never depends on the
 * cluster manager being up: once the node is set up, losing the manager only
 * pauses peer updates.
 */
import { joinHostPort, splitEndpoint } from "../../lib/domain/address.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import type { Logger } from "../../lib/log.ts";
import { WireGuardControl } from "../../lib/wireguard/mod.ts";
import { checkTransport } from "../../lib/api/cluster_client.ts";
import type { RegisterResponse } from "../../lib/api/cluster_types.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import { createLocalApp } from "../../lib/api/local_app.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import type { PortRule } from "../../lib/ip/nft.ts";
import { keyMadeAt, loadCredential, loadOrCreateKey } from "./key.ts";
import { KeyRotation, settleRotation } from "./rotation.ts";
import {
  defaultEndpointAddress,
  defaultLinkMtu,
  gatewayOf,
  mtuFor,
  setupNodeNetwork,
} from "./netsetup.ts";
import { PodManager } from "./pods.ts";
import { openPodAddresses } from "./addresses.ts";
import { Mesh } from "./mesh.ts";
import { installCni } from "./conflist.ts";
import { ClusterMemory } from "./cluster_memory.ts";
import { ClusterLink } from "./cluster_link.ts";
import { ClusterWatch } from "./peer_source.ts";
import { localHandlers, mapError, namedPeers } from "./local_handlers.ts";
import { NodeMetrics } from "./metrics.ts";
import { knownWorkloads, WorkloadManager } from "./workloads.ts";
import { EndpointReporter, PathKeeper } from "./nat.ts";
import { PathMtus, SystemPathProbe } from "./path_mtu.ts";
import { parseListen } from "../../lib/listen.ts";
import {
  DIRECT_IDLE_MS,
  DirectPaths,
  FLOW_TIMEOUT_S,
  type PodPaths,
  quarantineOwner,
  serveDirectory,
} from "./direct.ts";

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
  /** `ADDR:PORT` to serve Prometheus metrics on (none when absent). */
  readonly metricsListen?: string;
  /** `direct` (default): pods that talk get direct paths; `hub`: everything through the nodes. */
  readonly podPaths?: PodPaths;
  /** How long a direct path may be idle before it is removed (ms). */
  readonly directIdleMs?: number;
  /** Behind NAT: how often a relayed node pair tries the direct path again (ms; default 5 min). */
  readonly relayRetryMs?: number;
  /** Rotate the node's key this long after it was made, and again each time (ms; none when absent). */
  readonly keyLifetimeMs?: number;
  /** How far ahead of its announcement peers switch to a new key (ms; default 5 s). */
  readonly keySwitchLeadMs?: number;
}

/** Serves GET /metrics on `listen` until `signal`; the address in use is named when it fails. */
function serveMetrics(
  listen: string,
  signal: AbortSignal,
  render: () => Promise<string>,
): Deno.HttpServer {
  const { hostname, port } = parseListen(listen);
  try {
    return Deno.serve({ hostname, port, signal, onListen() {} }, async (req) => {
      if (new URL(req.url).pathname !== "/metrics") {
        return new Response("not found\n", { status: 404 });
      }
      return new Response(await render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    });
  } catch (err) {
    throw new Error(`Cannot serve metrics on ${listen}: ${(err as Error).message}`);
  }
}

/** Normalises `IP[:PORT]` to an endpoint with a port. */
export function endpointWithPort(value: string, port: number): string {
  if (splitEndpoint(value) !== undefined) return value;
  return joinHostPort(value.replace(/^\[(.*)\]$/, "$1"), port);
}

/** Runs the node manager until SIGTERM/SIGINT (or `signal`); returns the exit code. */
export async function join(
  config: JoinConfig,
  io: { logger: Logger; runner?: Runner; signal?: AbortSignal },
): Promise<number> {
  const log = io.logger;
  if (Deno.uid() !== 0) {
    throw new Error(
      "Cannot run the node manager: it needs root (it creates WireGuard interfaces, routes and nftables rules, and moves interfaces into pods)",
    );
  }
  for (const url of config.urls) {
    checkTransport(url, { insecure: config.insecure, flag: "the cluster URL" });
  }
  if (config.metricsListen !== undefined) parseListen(config.metricsListen);
  const runner = io.runner ?? new SystemRunner();
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  io.signal?.addEventListener("abort", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  Deno.addSignalListener("SIGINT", onSignal);

  let key = await loadOrCreateKey(config.keyDir);
  log.info("node {name} key {key}", { name: config.name, key: key.publicKey });
  const endpointIp = config.endpoint ?? await defaultEndpointAddress(runner);
  if (!endpointIp) {
    throw new Error("Cannot find this node's underlay address: no default route; pass --endpoint");
  }
  const endpoint = endpointWithPort(endpointIp, config.listenPort);
  const linkMtu = await defaultLinkMtu(runner);
  const mtu = config.mtu ?? mtuFor(linkMtu);

  await Deno.mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const db = openDatabase(`${config.stateDir}/node.db`);
  const store = new NodeStateStore(db);
  const credential = await loadCredential(config.keyDir);
  const cachedText = store.meta("registration");
  const cached = cachedText ? JSON.parse(cachedText) as RegisterResponse : undefined;
  const memory = new ClusterMemory(store, credential?.clusterId ?? cached?.cluster.id);
  const link = new ClusterLink({
    urls: config.urls,
    token: config.token,
    caCert: config.caCert,
    name: config.name,
    publicKey: key.publicKey,
    endpoint,
    detectEndpoint: config.endpoint === undefined,
    linkMtu,
    keyDir: config.keyDir,
    memory,
    logger: log,
    credential,
  });

  let reg = await link.register(stop.signal, cached);
  if (!reg) return 0;
  // A key rotation cut short by a restart: switched now, resumed, or dropped.
  const settled = await settleRotation(config.keyDir, key, reg.node, Date.now());
  const keyBefore = key.publicKey;
  if (settled.switched) {
    key = settled.key;
    log.info("a key rotation was due while stopped: the node key is {key} now", {
      key: key.publicKey,
    });
    reg = await link.registerKey(key.publicKey).catch((err) => {
      log.warn("cannot register the new key yet: {error}", { error: err });
      return reg as RegisterResponse;
    });
  }
  store.setMeta("registration", JSON.stringify({ ...reg, credential: "" }));
  const subnets = reg.node.subnets;
  log.info("registered: subnets {subnets}", { subnets });
  const nat = reg.node.nat === true;
  if (nat) {
    log.info("behind NAT: the manager sees this node at {seen}; keep-alives keep the mapping", {
      seen: reg.node.endpoint,
    });
  }

  const podPaths = config.podPaths ?? "direct";
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
    direct: {
      directoryPort: config.listenPort,
      flows: podPaths === "direct",
      flowTimeoutS: FLOW_TIMEOUT_S,
    },
  });

  const addresses = openPodAddresses(db, subnets);
  // The mesh (made below) tells which node holds which subnet.
  let meshPeers = (): readonly PeerEntry[] | undefined => undefined;
  const direct = new DirectPaths({
    runner,
    wg,
    logger: log,
    store,
    addresses,
    nodeName: config.name,
    iface: config.iface,
    subnets,
    mtu,
    idleMs: config.directIdleMs ?? DIRECT_IDLE_MS,
    directoryPort: config.listenPort,
    promote: podPaths === "direct",
    nat,
    nodes: () => meshPeers(),
  });
  const nodeListenPort = (await wg.show(config.iface)).listenPort;
  const pods = new PodManager({
    runner,
    wg,
    logger: log,
    store,
    addresses,
    nodeInterface: config.iface,
    nodePublicKey: key.publicKey,
    nodeListenPort,
    mtu,
    // Workloads that bring their own interface are neither pods nor orphans,
    // and addresses held until other nodes confirm a DEL are not free.
    others: () => {
      const w = knownWorkloads(store);
      return { keys: w.keys, owners: new Set([...w.owners, ...DirectPaths.quarantined(store)]) };
    },
    direct: {
      forget: (r) => direct.forget(r),
      holdAs: quarantineOwner,
      check: (r) => direct.check(r),
    },
  });
  const rec = await pods.reconcile();
  if (Object.values(rec).some((n) => n > 0)) log.info("reconciled pods: {rec}", { rec });
  if (settled.switched) await pods.useNodeKey(keyBefore, key.publicKey);
  const drec = await direct.reconcile();
  if (drec.kept + drec.dropped > 0) {
    log.info("direct paths after the restart: {rec}", { rec: drec });
  }
  pods.sweepWhileRecovered(stop.signal);
  const workloads = new WorkloadManager({
    wg,
    logger: log,
    store,
    addresses,
    nodeName: config.name,
    nodeInterface: config.iface,
    nodePublicKey: key.publicKey,
    nodeListenPort,
    nodeEndpoint: endpoint,
    mtu,
    clusterCidrs: [...reg.cluster.podCidrs, ...reg.cluster.clientCidrs],
    podKeys: () => pods.podKeys(),
  });
  const wrec = await workloads.reconcile();
  if (Object.values(wrec).some((n) => n > 0)) {
    log.info("reconciled workloads: {rec}", { rec: wrec });
  }

  /** One packet to another node, which it answers: a ping to its gateway. */
  /** Pings another node's gateway once; true when it answered within a second. */
  const pingNode = async (peer: PeerEntry): Promise<boolean> => {
    const gateway = peer.allowedIps[0] && gatewayOf(peer.allowedIps[0]);
    if (!gateway) return false;
    const r = await runner.exec(["ping", "-c", "1", "-W", "1", "-q", gateway]).catch(() => null);
    return r?.code === 0;
  };
  const mesh = new Mesh({
    wg,
    iface: config.iface,
    self: { name: config.name, publicKey: key.publicKey, subnets, nat },
    logger: log,
    podKeys: () => new Set([...pods.podKeys(), ...knownWorkloads(store).keys]),
    prime: (peer) => void pingNode(peer),
  });
  meshPeers = () => mesh.revision > 0 ? mesh.peers : undefined;
  // Behind NAT: NAT'd node peers with no way through go by the manager's relay.
  const paths = !nat ? undefined : new PathKeeper({
    show: () => wg.show(config.iface),
    peers: meshPeers,
    relay: (name) => link.call((c) => c.relay(name)),
    choose: (key, endpoint, apply) => mesh.choose(key, endpoint, apply),
    setEndpoint: (key, endpoint) =>
      wg.configure(config.iface, { peers: [{ publicKey: key, endpoint }] }),
    ping: pingNode,
    probeMs: config.relayRetryMs ?? 300_000,
    logger: log,
  });
  // Where NAT'd nodes are seen from here goes to the manager (from a node not behind NAT).
  const reporter = nat ? undefined : new EndpointReporter({
    show: () => wg.show(config.iface),
    peers: meshPeers,
    report: (name, endpoint) => link.call((c) => c.observeEndpoint(name, endpoint)),
    logger: log,
  });
  // Node peers whose underlay path is narrower than this node's link get routes with its MTU.
  const pathMtus = new PathMtus({
    runner,
    iface: config.iface,
    ifaceMtu: mtu,
    ipv6Pods: subnets.some((s) => s.includes(":")),
    linkMtu: linkMtu ?? mtu + 80,
    peers: () =>
      meshPeers()?.map((entry) => ({
        entry,
        endpoint: mesh.chosen(entry.publicKey) ?? entry.endpoint,
      })),
    probe: new SystemPathProbe(runner),
    logger: log,
  });
  const peers = new ClusterWatch({ link, memory, logger: log });
  const metrics = new NodeMetrics();
  const facts = {
    name: config.name,
    publicKey: key.publicKey,
    endpoint,
    nat,
    seenAt: reg.node.endpoint,
    iface: config.iface,
    backend: net.backend,
    listenPort: config.listenPort,
    mtu,
    subnets,
    cluster: reg.cluster,
    clusterUrls: config.urls,
    podPaths,
  };
  const parts = {
    facts,
    pods,
    addresses,
    store,
    wg,
    mesh,
    peers,
    metrics,
    workloads,
    direct,
    pathMtus,
    ...(paths ? { paths } : {}),
  };
  const rotation = new KeyRotation(key, {
    keyDir: config.keyDir,
    logger: log,
    setPrivateKey: (privateKey) => wg.configure(config.iface, { privateKey }),
    announce: async (next) => {
      await link.call((c) => c.announceKey(config.name, next));
    },
    register: async (publicKey) => {
      const r = await link.registerKey(publicKey);
      store.setMeta("registration", JSON.stringify({ ...r, credential: "" }));
    },
    nodes: meshPeers,
    movePods: (from, to) => pods.useNodeKey(from, to, { dialIn: true }),
    settlePods: () => pods.settleNodeKey(),
    preparePods: (next) => pods.prepareNodeKey(next),
    podAddresses: () => pods.podAddresses(),
    podHandshakes: async () => {
      const mine = pods.podKeys();
      const state = await wg.show(config.iface);
      return new Map(
        state.peers.filter((p) => mine.has(p.publicKey)).map((
          p,
        ) => [p.publicKey, p.latestHandshake]),
      );
    },
    changed: (k) => workloads.useNodeKey(k.publicKey),
    rotatePods: (maxAgeMs) => pods.rotateKeys(maxAgeMs),
    ...(config.keySwitchLeadMs !== undefined ? { leadMs: config.keySwitchLeadMs } : {}),
  });
  const handlers = localHandlers({ ...parts, rotation });
  const app = createLocalApp(handlers, mapError);
  const metricsServer = config.metricsListen === undefined
    ? undefined
    : serveMetrics(config.metricsListen, stop.signal, () =>
      metrics.render({
        peers: () => namedPeers(parts),
        addresses,
        mesh,
        watch: peers,
        direct: direct.counts,
      }));

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

  let applied = false;
  await Promise.all([
    peers.run(
      async (event) => {
        await mesh.apply(event);
        applied = true;
      },
      () => applied ? mesh.revision : undefined,
      stop.signal,
    ),
    link.heartbeats(stop.signal, async () => ({
      pods: store.all().length,
      ready: (await handlers.status().catch(() => "failed")) === undefined,
    })),
    server.finished,
    metricsServer?.finished,
    ...serveDirectory(direct, {
      gateways: subnets.map(gatewayOf),
      port: config.listenPort,
      signal: stop.signal,
      logger: log,
    }),
    direct.run(stop.signal),
    reporter?.run(stop.signal),
    paths?.run(stop.signal),
    pathMtus.run(stop.signal),
    settled.resume &&
    rotation.resume(settled.resume.next, settled.resume.switchAt).catch((err) =>
      log.error("the key rotation cut short by the restart failed: {error}", { error: err })
    ),
    config.keyLifetimeMs !== undefined &&
    rotation.run(config.keyLifetimeMs, await keyMadeAt(config.keyDir), stop.signal),
    ...(podPaths === "hub" ? [direct.endAll(() => mesh.revision > 0, stop.signal)] : []),
  ]);
  memory.flush();
  mesh.close();
  Deno.removeSignalListener("SIGTERM", onSignal);
  Deno.removeSignalListener("SIGINT", onSignal);
  db.close();
  log.info("stopped; the interface and pods stay as they are");
  return 0;
}
