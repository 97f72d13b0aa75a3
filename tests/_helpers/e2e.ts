/** Shared bits of end-to-end tests: the opt-in switch, unique names, node and flow probes. */
import { SystemRunner } from "../../lib/ip/runner.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { startProcess } from "../../lib/ip/process.ts";
import { getLogger } from "../../lib/log.ts";
import { Lab, type LabNodeState, type LabPod, scaled, timeScale } from "../../modes/demo/lab.ts";
import { type Backend, USERSPACE_SOCKET_DIR } from "../../lib/wireguard/mod.ts";

export { scaled, timeScale } from "../../modes/demo/lab.ts";

const runner = new SystemRunner();

/** True when the end-to-end suite was asked for (tests/run.ts sets it when root and tools are present). */
export const E2E = Deno.env.get("WGCNI_E2E") === "1";

/**
 * True when this run repeats the suite on a second WireGuard backend (the
 * kernel group in its guest): what does not depend on the backend was
 * tested by the first run and is left out here.
 */
export const SECOND_BACKEND = Deno.env.get("WGCNI_TEST_SECOND_BACKEND") === "1";

/** Options of {@linkcode e2eTest} and {@linkcode labTest}. */
export interface E2eOptions {
  readonly ignore?: boolean;
  /** Its behaviour does not depend on the WireGuard backend: left out of a {@linkcode SECOND_BACKEND} run. */
  readonly neutral?: boolean;
}

/**
 * Declares an end-to-end test: it runs when {@linkcode E2E} is set and
 * `ignore` is not, without Deno's op and resource sanitizers.
 */
export function e2eTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void>,
  options: E2eOptions = {},
): void {
  Deno.test({
    name,
    ignore: !E2E || (options.ignore ?? false) || (SECOND_BACKEND && (options.neutral ?? false)),
    sanitizeOps: false,
    sanitizeResources: false,
    fn,
  });
}

/** Declares an {@linkcode e2eTest} on a lab of its own, torn down after the test whether it passes or fails. */
export function labTest(
  name: string,
  fn: (lab: Lab, t: Deno.TestContext) => Promise<void>,
  options: E2eOptions = {},
): void {
  e2eTest(name, async (t) => {
    const lab = await Lab.create(runner, getLogger("test"));
    try {
      await fn(lab, t);
    } finally {
      await lab.teardown();
    }
  }, options);
}

/**
 * A step of an end-to-end test; with `neutral` (its behaviour does not
 * depend on the WireGuard backend) it is left out, reported as ignored, in a
 * {@linkcode SECOND_BACKEND} run.
 */
export function step(
  t: Deno.TestContext,
  name: string,
  fn: (t: Deno.TestContext) => Promise<void>,
  options: Pick<E2eOptions, "neutral"> = {},
): Promise<boolean> {
  return t.step({ name, ignore: SECOND_BACKEND && (options.neutral ?? false), fn });
}

/**
 * True when the time scale says this machine runs many times slower than
 * usual (the kernel guest's emulated CPU): tests that repeat a load many
 * times repeat it less there.
 */
export const SLOW_MACHINE = timeScale() > 1;

let counter = 0;

/** A short unique name for namespaces and interfaces: prefix + pid + counter (≤ 15 bytes for links). */
export function uniqueName(prefix: string): string {
  counter++;
  const pid = (Deno.pid % 100000).toString(36);
  const rand = Math.floor(Math.random() * 36 ** 2).toString(36);
  return `${prefix}${pid}${counter.toString(36)}${rand}`.slice(0, 15);
}

/** The pod reservations a node manager reports on its local API. */
export async function allocations(
  node: { socket: string },
): Promise<{ containerId: string; ifname: string; addresses: string[] }[]> {
  const c = createLocalClient(node.socket);
  try {
    return (await c.allocations()).pods as {
      containerId: string;
      ifname: string;
      addresses: string[];
    }[];
  } finally {
    c.close();
  }
}

/**
 * Pods the node knows only from the kernel (its store lost them), as the
 * local API reports them; none from a node manager that has no such view.
 */
export async function recoveredPods(
  node: { socket: string },
): Promise<{ publicKey: string; addresses: string[]; listenPort: number }[]> {
  const c = createLocalClient(node.socket);
  try {
    return ((await c.allocations()).recovered ?? []) as {
      publicKey: string;
      addresses: string[];
      listenPort: number;
    }[];
  } finally {
    c.close();
  }
}

/** Waits until `fn` is true, or fails naming `what`; `ms` is scaled by the time scale. */
export async function eventually(
  what: string,
  fn: () => Promise<boolean>,
  ms = 15000,
): Promise<void> {
  const end = Date.now() + scaled(ms);
  while (Date.now() < end) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`Timed out waiting for ${what}`);
}

/** What a node manager reports about itself on its local API. */
export async function nodeInfo(node: LabNodeState) {
  const c = createLocalClient(node.socket);
  try {
    return await c.node() as {
      publicKey: string;
      gateways: string[];
      meshOperations: number;
      connected: boolean;
    };
  } finally {
    c.close();
  }
}

/**
 * Adds node `index` to the lab and waits until every node of `by` has it as
 * a peer (`ms` as in {@linkcode eventually}); returns it and its own report.
 */
export async function addNodeSeenBy(
  lab: Lab,
  index: number,
  options: { by: readonly LabNodeState[]; ms?: number },
) {
  const node = await lab.addNode(index);
  const info = await nodeInfo(node);
  await eventually(
    `${node.name} as a peer of ${options.by.map((n) => n.name).join(" and ")}`,
    async () => {
      for (const n of options.by) if (!(await wgPeers(n)).includes(info.publicKey)) return false;
      return true;
    },
    options.ms,
  );
  return { node, info };
}

/** The public keys of a node interface's peers. */
export async function wgPeers(node: LabNodeState): Promise<string[]> {
  const out = await runner.run(["wg", "show", node.iface, "peers"], { netns: node.netns });
  return out.split("\n").filter(Boolean);
}

/** The ifindex of a node's WireGuard interface (unchanged while it is never recreated). */
export async function ifindex(node: LabNodeState): Promise<number> {
  const out = await runner.run(["ip", "-j", "link", "show", node.iface], { netns: node.netns });
  return (JSON.parse(out) as { ifindex: number }[])[0]?.ifindex as number;
}

/** `ping -W` seconds for a reply that should come: `s`, scaled by the time scale. */
export function waitS(s = 2): string {
  return String(Math.ceil(scaled(s * 1000) / 1000));
}

/** One ping that may take up to `tries` tries (a WireGuard handshake can drop the first). */
export async function ping(netns: string, addr: string, tries = 4): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    const r = await runner.exec(["ping", "-n", "-q", "-c", "1", "-W", waitS(), addr], { netns });
    if (r.code === 0) return true;
  }
  return false;
}

let backend: Promise<Backend> | undefined;

/**
 * The WireGuard backend node managers pick here: `WGCNI_TEST_BACKEND` when
 * set (the kernel guest sets it, so a fall-back to wireguard-go fails the
 * tests), else kernel when a throwaway namespace can hold a kernel
 * WireGuard link.
 */
export function expectedBackend(): Promise<Backend> {
  return backend ??= (async () => {
    const given = Deno.env.get("WGCNI_TEST_BACKEND");
    if (given === "kernel" || given === "userspace") return given;
    const ns = uniqueName("wgprobe");
    await runner.run(["ip", "netns", "add", ns]);
    try {
      const r = await runner.exec(["ip", "link", "add", "wgprobe", "type", "wireguard"], {
        netns: ns,
      });
      return r.code === 0 ? "kernel" : "userspace";
    } finally {
      await runner.exec(["ip", "netns", "del", ns]);
    }
  })();
}

/** Pids of running wireguard-go processes, with the interface name each was started for. */
export async function wireguardGoProcesses(): Promise<{ pid: number; name: string }[]> {
  const found: { pid: number; name: string }[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const argv = await Deno.readTextFile(`/proc/${e.name}/cmdline`).then(
      (t) => t.split("\0"),
      () => [],
    );
    if (argv[0]?.replace(/^.*\//, "") === "wireguard-go") {
      found.push({
        pid: Number(e.name),
        name: argv.slice(1).find((a) => !a.startsWith("-")) ?? "",
      });
    }
  }
  return found;
}

/**
 * wireguard-go interfaces whose name starts with `prefix` that are still
 * there: control sockets or processes (none ever, on the kernel backend).
 */
export async function userspaceInterfacesLeft(prefix: string): Promise<string[]> {
  let sockets: string[] = [];
  try {
    sockets = [...Deno.readDirSync(USERSPACE_SOCKET_DIR)].map((e) => e.name.replace(/\.sock$/, ""));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const procs = (await wireguardGoProcesses()).map((p) => p.name);
  return [...new Set([...sockets, ...procs])].filter((n) => n.startsWith(prefix)).sort();
}

/** Whether a UDP socket is bound on `port` in a namespace. */
export async function udpBound(netns: string, port: number): Promise<boolean> {
  const out = await runner.run(["ss", "-Hulnp"], { netns });
  return out.split("\n").some((l) => new RegExp(`:${port}\\s`).test(l));
}

/**
 * The UDP port of the pod interface that holds `address`, as the node-side
 * peer routing that address names it (its socket in the node's namespace).
 */
export async function podPort(node: LabNodeState, address: string): Promise<number> {
  const dump = await runner.run(["wg", "show", node.iface, "dump"], { netns: node.netns });
  for (const line of dump.split("\n").slice(1)) {
    const [, , endpoint, allowed] = line.split("\t");
    if (allowed?.split(",").some((a) => a.split("/")[0] === address)) {
      return Number(endpoint?.match(/:(\d+)$/)?.[1] ?? 0);
    }
  }
  return 0;
}

/**
 * Whether the pod interface created as `wgName` still exists, whatever the
 * backend: a wireguard-go control socket or process of that name, a link of
 * that name in the node's namespace, a WireGuard link in the pod's, or (given
 * its port) its UDP socket in the node's namespace, which a kernel interface
 * keeps until its namespace is gone for good.
 */
export async function podInterfaceExists(
  wgName: string,
  where: { node: string; pod?: string; port?: number },
): Promise<boolean> {
  if (where.port !== undefined && where.port > 0 && await udpBound(where.node, where.port)) {
    return true;
  }
  const socket = await Deno.stat(`${USERSPACE_SOCKET_DIR}/${wgName}.sock`).then(
    () => true,
    () => false,
  );
  if (socket) return true;
  if ((await wireguardGoProcesses()).some((p) => p.name === wgName)) return true;
  if ((await runner.exec(["ip", "link", "show", wgName], { netns: where.node })).code === 0) {
    return true;
  }
  if (where.pod !== undefined) {
    const r = await runner.exec(["ip", "-d", "-j", "link", "show"], { netns: where.pod });
    if (r.code === 0) {
      const links = JSON.parse(r.stdout || "[]") as { linkinfo?: { info_kind?: string } }[];
      if (links.some((l) => l.linkinfo?.info_kind === "wireguard")) return true;
      if (links.some((l) => l.linkinfo?.info_kind === "tun")) return true;
    }
  }
  return false;
}

/** A ping flow from a namespace; returns sent/received when stopped. */
export async function flow(netns: string, addr: string, intervalS = 0.05) {
  const out = await Deno.makeTempFile();
  const p = await startProcess(["ping", "-n", "-i", String(intervalS), addr], {
    netns,
    logFile: out,
  });
  return {
    async stop() {
      p.kill("SIGINT");
      await p.exited;
      const text = await Deno.readTextFile(out);
      await Deno.remove(out);
      // Echoes still in flight when the flow was stopped are not losses:
      // count up to the last answered sequence number.
      const answered = new Set([...text.matchAll(/icmp_seq=(\d+) /g)].map((m) => Number(m[1])));
      const sent = answered.size === 0
        ? Number(text.match(/(\d+) packets transmitted/)?.[1] ?? 0)
        : Math.max(...answered);
      return { sent, received: answered.size };
    },
  };
}

/** A TCP listener in a namespace on every address of both families (stop() ends it). */
export async function listen(netns: string, port: number) {
  return await startProcess(["busybox", "nc", "-ll", "-p", String(port), "-e", "/bin/true"], {
    netns,
  });
}

/** Whether a TCP connection from `netns` to `host`:`port` is accepted within `timeoutS`. */
export async function tcpConnects(
  netns: string,
  host: string,
  port: number,
  timeoutS = 3,
): Promise<boolean> {
  const r = await runner.exec([
    "timeout",
    String(timeoutS),
    "bash",
    "-c",
    `exec 3<>/dev/tcp/${host}/${port}`,
  ], { netns });
  return r.code === 0;
}

/** A namespace's routes through `dev` with an MTU of their own: destination → MTU. */
export async function mtuRoutes(node: LabNodeState): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const family of ["-4", "-6"]) {
    const r = await runner.run(["ip", "-j", family, "route", "show", "dev", node.iface], {
      netns: node.netns,
    });
    for (const x of JSON.parse(r) as { dst: string; metrics?: { mtu?: number }[] }[]) {
      const mtu = x.metrics?.find((m) => m.mtu !== undefined)?.mtu;
      if (mtu !== undefined) out.set(x.dst, mtu);
    }
  }
  return out;
}

/** Fragments made, reassembled or refused so far in each namespace (IPv4 and IPv6). */
export async function fragments(namespaces: readonly string[]): Promise<number[]> {
  return await Promise.all(namespaces.map(async (netns) => {
    const r = await runner.exec(["nstat", "-az", "-j"], { netns });
    const k = (JSON.parse(r.stdout) as { kernel: Record<string, number> }).kernel;
    return ["IpFragCreates", "IpReasmReqds", "Ip6FragCreates", "Ip6ReasmReqds"]
      .reduce((n, f) => n + (k[f] ?? 0), 0);
  }));
}

/** One ping that may not fragment, `size` bytes of payload; its output. */
export async function dfPing(from: LabPod, to: string, size: number) {
  return await runner.exec([
    "ping",
    "-n",
    "-c",
    "1",
    "-W",
    "3",
    "-M",
    "do",
    "-s",
    String(size),
    to,
  ], { netns: from.netns });
}
