/**
 * Data plane: TCP throughput (iperf3) and round-trip latency (ping) pod to
 * pod, across two nodes and on one node, with pods attached through the real
 * CNI path of a lab; against two references measured in the same run between
 * the same kind of namespaces: a hand-built wireguard-go tunnel over a veth
 * (one encryption) and the plain veth (none).
 *
 * The number of WireGuard encryptions a packet goes through is measured, not
 * assumed: the (interface, peer) pairs whose transmit counter grew by at
 * least 90% of the bytes iperf3 delivered. IP fragmentation is read from
 * /proc/net/snmp and /proc/net/snmp6 in every namespace on the path, before
 * and after. Needs root (network namespaces).
 *
 * The helpers below are exported for bench/density.ts.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable, pct } from "./_report.ts";
import { Lab, type LabNodeState, type LabPod, removeNamespace } from "../modes/demo/lab.ts";
import { SystemRunner } from "../lib/ip/runner.ts";
import { getLogger } from "../lib/log.ts";
import { generateKeyPair, WireGuardControl } from "../lib/wireguard/mod.ts";
import { createLocalClient } from "../lib/api/local_client.ts";

export const runner = new SystemRunner();
const enc = new TextEncoder();
const IPERF_SECONDS = 5;
const PING_COUNT = 200;
/** An (interface, peer) counts as one encryption when its tx grew by this share of the payload. */
const HOP_SHARE = 0.9;

/** Progress on stderr, so a table on stdout stays clean. */
export function say(line: string): void {
  Deno.stderr.writeSync(enc.encode(line + "\n"));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A short lab id carrying this process's pid (pid_max here is 32768: ≤ 3 base-36 digits). */
export function pidId(letter: string): string {
  return `${letter}${Deno.pid.toString(36)}`;
}

// ---------------------------------------------------------------------------
// Scratch: namespaces and processes a benchmark makes itself (outside the Lab).

/** Namespaces and child processes made by a benchmark; {@linkcode Scratch.cleanup} removes them. */
export class Scratch {
  readonly namespaces: string[] = [];
  readonly children = new Map<number, Deno.ChildProcess>();
  /** wireguard-go daemons started in our namespaces (they detach, so found by namespace). */
  readonly daemons = new Set<number>();
  #closed = false;
  readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  async netns(suffix: string): Promise<string> {
    if (this.#closed) throw new Error("cleanup has started");
    const name = `${this.prefix}-${suffix}`;
    await runner.run(["ip", "netns", "add", name]);
    this.namespaces.push(name);
    await runner.run(["ip", "link", "set", "lo", "up"], { netns: name });
    return name;
  }

  /** Starts a process in a namespace (nsenter execs it: the pid is the program's). */
  spawn(argv: readonly string[], netns: string, output = false): Deno.ChildProcess {
    if (this.#closed) throw new Error("cleanup has started");
    const child = new Deno.Command("nsenter", {
      args: [`--net=/run/netns/${netns}`, "--", ...argv],
      stdin: "null",
      stdout: output ? "piped" : "null",
      stderr: output ? "piped" : "null",
    }).spawn();
    this.children.set(child.pid, child);
    child.status.then(() => this.children.delete(child.pid));
    return child;
  }

  /** Records the wireguard-go daemons now running in our namespaces. */
  async noteDaemons(): Promise<void> {
    for (const ns of this.namespaces) {
      for (const p of await procsInNetns(ns, "wireguard-go")) this.daemons.add(p.pid);
    }
  }

  /** Ends our processes by pid, deletes links then namespaces; returns what it could not remove. */
  async cleanup(): Promise<string[]> {
    this.#closed = true;
    const problems: string[] = [];
    await this.noteDaemons().catch(() => {});
    await Promise.all([...this.children.values()].map((c) => stopChild(c)));
    for (const ns of [...this.namespaces].reverse()) {
      const problem = await removeNamespace(runner, ns);
      if (problem !== undefined) problems.push(problem);
    }
    this.namespaces.length = 0;
    // A wireguard-go ends when its TUN goes; any still alive is ended by its pid.
    for (const pid of this.daemons) {
      for (let i = 0; i < 20 && await isComm(pid, "wireguard-go"); i++) await sleep(50);
      if (await isComm(pid, "wireguard-go")) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
    }
    this.daemons.clear();
    return problems;
  }
}

/**
 * Removes namespaces left under `prefix` (a prefix carrying this process's
 * pid, so they are ours): e.g. one made by a lab interrupted before it could
 * record it. Links first, so their wireguard-go daemons end.
 */
export async function sweep(prefix: string): Promise<void> {
  const list = await runner.exec(["ip", "-j", "netns", "list"]);
  const names = (JSON.parse(list.stdout || "[]") as { name: string }[]).map((n) => n.name)
    .filter((n) => n.startsWith(prefix));
  for (const ns of names) {
    const links = await runner.exec(["ip", "-j", "link", "show"], { netns: ns });
    for (const l of JSON.parse(links.stdout || "[]") as { ifname: string }[]) {
      if (l.ifname !== "lo") await runner.exec(["ip", "link", "del", l.ifname], { netns: ns });
    }
    await runner.exec(["ip", "netns", "del", ns]);
  }
}

async function stopChild(c: Deno.ChildProcess, graceMs = 2000): Promise<void> {
  try {
    c.kill("SIGTERM");
  } catch {
    return;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), graceMs));
  const first = await Promise.race([c.status, late]);
  clearTimeout(timer);
  if (first === "late") {
    try {
      c.kill("SIGKILL");
    } catch { /* gone */ }
    await c.status;
  }
}

async function isComm(pid: number, comm: string): Promise<boolean> {
  try {
    return (await Deno.readTextFile(`/proc/${pid}/comm`)).trim() === comm;
  } catch {
    return false;
  }
}

/**
 * Runs `body` with cleanup on every exit path, SIGINT and SIGTERM included
 * (cleanup runs, then the process exits 130).
 */
export async function guarded<T>(
  cleanup: () => Promise<void>,
  body: () => Promise<T>,
): Promise<T> {
  let cleaning: Promise<void> | undefined;
  const once = () => cleaning ??= cleanup().catch((err) => say(`cleanup: ${err}`));
  const onSignal = () => {
    say("interrupted, cleaning up");
    once().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    return await body();
  } finally {
    await once();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

/**
 * Runs `body` on a lab of its own and a scratch space (ids carrying this
 * process's pid), both removed afterwards, on an interrupt too.
 */
export async function inLab<T>(
  bench: string,
  letter: string,
  body: (lab: Lab, scratch: Scratch) => Promise<T>,
): Promise<T> {
  const id = pidId(letter);
  const scratch = new Scratch(`wgd-${id}-r`);
  let lab: Lab | undefined;
  return await guarded(async () => {
    const problems = await scratch.cleanup();
    if (problems.length) say(`${bench}: cleanup problems: ${problems.join("; ")}`);
    await lab?.teardown();
    await sweep(`wgd-${id}-`);
  }, async () => {
    lab = await Lab.create(runner, getLogger("bench"), { id });
    return await body(lab, scratch);
  });
}

// ---------------------------------------------------------------------------
// Reading processes and namespaces.

async function nsInode(ns: string): Promise<string> {
  return `net:[${(await Deno.stat(`/run/netns/${ns}`)).ino}]`;
}

/** Processes named `comm` whose network namespace is `ns`, with their argv. */
export async function procsInNetns(
  ns: string,
  comm: string,
): Promise<{ pid: number; argv: string[] }[]> {
  const want = await nsInode(ns);
  const out: { pid: number; argv: string[] }[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      if ((await Deno.readTextFile(`/proc/${e.name}/comm`)).trim() !== comm) continue;
      if ((await Deno.readLink(`/proc/${e.name}/ns/net`)) !== want) continue;
      const argv = (await Deno.readTextFile(`/proc/${e.name}/cmdline`)).split("\0")
        .filter((a) => a !== "");
      out.push({ pid: Number(e.name), argv });
    } catch {
      // Ended while reading.
    }
  }
  return out;
}

export interface ProcMem {
  /** Resident set, KiB. */
  rss: number;
  /** Proportional set (shared pages divided among their users), KiB. */
  pss: number;
  threads: number;
  /** utime + stime, clock ticks. */
  cpuTicks: number;
}

/** Memory, threads and CPU time of one process (zeros when it is gone). */
export async function procMem(pid: number): Promise<ProcMem> {
  const m: ProcMem = { rss: 0, pss: 0, threads: 0, cpuTicks: 0 };
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    m.rss = Number(status.match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0);
    m.threads = Number(status.match(/^Threads:\s+(\d+)/m)?.[1] ?? 0);
    const rollup = await Deno.readTextFile(`/proc/${pid}/smaps_rollup`);
    m.pss = Number(rollup.match(/^Pss:\s+(\d+)/m)?.[1] ?? 0);
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    m.cpuTicks = Number(f[11] ?? 0) + Number(f[12] ?? 0);
  } catch {
    // Gone.
  }
  return m;
}

/** The program's pid behind a pid that may still be a not-yet-exec'd nsenter. */
export async function programPid(pid: number): Promise<number> {
  if (!await isComm(pid, "nsenter")) return pid;
  const kids = (await Deno.readTextFile(`/proc/${pid}/task/${pid}/children`)).trim().split(/\s+/);
  return Number(kids[0] ?? pid);
}

/** Fragmentation counters per namespace (IPv4 and IPv6). */
export type FragCounters = Record<string, Record<string, number>>;
const FRAG_KEYS = ["FragCreates", "ReasmReqds", "Ip6FragCreates", "Ip6ReasmReqds"];

export async function fragCounters(namespaces: readonly string[]): Promise<FragCounters> {
  const out: FragCounters = {};
  for (const ns of namespaces) {
    const c: Record<string, number> = {};
    const snmp = (await runner.run(["cat", "/proc/net/snmp"], { netns: ns })).split("\n");
    for (let i = 0; i + 1 < snmp.length; i++) {
      const head = snmp[i]!.split(/\s+/);
      const vals = snmp[i + 1]!.split(/\s+/);
      if (head[0] !== "Ip:" || vals[0] !== "Ip:" || !/^\d/.test(vals[1] ?? "")) continue;
      head.forEach((k, j) => {
        if (j > 0) c[k] = Number(vals[j]);
      });
    }
    const snmp6 = await runner.run(["cat", "/proc/net/snmp6"], { netns: ns });
    for (const m of snmp6.matchAll(/^(Ip6\w+)\s+(\d+)/gm)) c[m[1]!] = Number(m[2]);
    out[ns] = c;
  }
  return out;
}

/** The sum of fragments created and reassemblies requested between two readings, and where. */
export function fragDelta(before: FragCounters, after: FragCounters) {
  let total = 0;
  const where: string[] = [];
  for (const [ns, a] of Object.entries(after)) {
    for (const k of FRAG_KEYS) {
      const d = (a[k] ?? 0) - (before[ns]?.[k] ?? 0);
      if (d !== 0) where.push(`${ns} ${k} +${d}`);
      total += d;
    }
  }
  return { total, where };
}

/** tx bytes per (interface, peer) of userspace/kernel WireGuard interfaces, read with `wg`. */
async function wgTx(ifaces: readonly WgIface[]): Promise<Map<string, number>> {
  const m = new Map<string, number>();
  for (const { name: i, netns } of ifaces) {
    const r = await runner.exec(["wg", "show", i, "transfer"], { netns });
    if (r.code !== 0) continue;
    for (const line of r.stdout.trim().split("\n")) {
      const [peer, , tx] = line.split("\t");
      // Pod interfaces share a name (eth0) across namespaces: the namespace tells them apart.
      if (peer && tx) m.set(`${netns}/${i}/${peer}`, Number(tx));
    }
  }
  return m;
}

/** A WireGuard interface and the namespace `wg` reaches it from. */
interface WgIface {
  readonly name: string;
  readonly netns: string;
}

// ---------------------------------------------------------------------------
// Traffic.

export interface Throughput {
  gbps: number;
  bytes: number;
  retransmits: number;
  error?: string;
}

/** One iperf3 TCP run from `clientNs` to a one-off server bound to `addr` in `serverNs`. */
export async function iperf(
  scratch: Scratch,
  serverNs: string,
  clientNs: string,
  addr: string,
  seconds = IPERF_SECONDS,
): Promise<Throughput> {
  const port = "5201";
  const server = scratch.spawn(["iperf3", "-s", "-1", "-B", addr, "-p", port], serverNs);
  try {
    for (let i = 0; i < 100; i++) {
      const ss = await runner.exec(["ss", "-Hltn", `sport = :${port}`], { netns: serverNs });
      if (ss.stdout.trim() !== "") break;
      await sleep(50);
    }
    const r = await runner.exec(
      ["iperf3", "-c", addr, "-p", port, "-t", String(seconds), "-O", "1", "-J"],
      { netns: clientNs },
    );
    let j: {
      error?: string;
      end?: {
        sum_received?: { bits_per_second: number; bytes: number };
        sum_sent?: { retransmits?: number };
      };
    };
    try {
      j = JSON.parse(r.stdout);
    } catch {
      return { gbps: NaN, bytes: 0, retransmits: 0, error: r.stderr.trim() || "no JSON" };
    }
    const rec = j.end?.sum_received;
    if (j.error || !rec) {
      return { gbps: NaN, bytes: 0, retransmits: 0, error: j.error ?? "no result" };
    }
    return {
      gbps: rec.bits_per_second / 1e9,
      bytes: rec.bytes,
      retransmits: j.end?.sum_sent?.retransmits ?? 0,
    };
  } finally {
    await stopChild(server);
  }
}

export interface Rtt {
  p50: number;
  p99: number;
  sent: number;
  received: number;
}

/** `ping -c COUNT -i 0.01` from `ns`; per-packet round trips in ms. */
export async function pingRtt(ns: string, addr: string, count = PING_COUNT): Promise<Rtt> {
  const r = await runner.exec(
    ["ping", "-n", "-c", String(count), "-i", "0.01", "-W", "2", addr],
    { netns: ns },
  );
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  return { p50: pct(rtts, 50), p99: pct(rtts, 99), sent: count, received: rtts.length };
}

/** Pings until one answer (WireGuard handshakes done, routes in place), or throws. */
export async function waitReachable(ns: string, addr: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const r = await runner.exec(["ping", "-n", "-q", "-c", "1", "-W", "1", addr], { netns: ns });
    if (r.code === 0) return;
    await sleep(200);
  }
  throw new Error(`${addr} not reachable from ${ns} within ${ms / 1000} s`);
}

// ---------------------------------------------------------------------------
// References.

export interface RefPair {
  /** Namespaces A and B, joined by a veth (underlay addresses below). */
  a: string;
  b: string;
  underlayA: string;
  underlayB: string;
  /** WireGuard interfaces (creation names) and tunnel addresses, when built with a tunnel. */
  wgA?: string;
  wgB?: string;
  tunnelA?: string;
  tunnelB?: string;
}

/**
 * Two plain namespaces joined by a veth (MTU 1500, 198.51.100.1 and .2);
 * with `wgMtu`, also a WireGuard interface in each (kernel WireGuard where the
 * kernel has it, else wireguard-go; one peer, the other
 * end; 10.201.0.1 and .2), built the way an operator would by hand.
 */
export async function buildRefPair(
  scratch: Scratch,
  tag: string,
  options: { wgMtu?: number } = {},
): Promise<RefPair> {
  const a = await scratch.netns(`${tag}a`);
  const b = await scratch.netns(`${tag}b`);
  const pair: RefPair = { a, b, underlayA: "198.51.100.1", underlayB: "198.51.100.2" };
  await runner.run(["ip", "-batch", "-"], {
    netns: a,
    stdin: [
      `link add eth0 type veth peer name eth0 netns /run/netns/${b}`,
      "addr add 198.51.100.1/24 dev eth0",
      "link set eth0 up",
    ].join("\n") + "\n",
  });
  await runner.run(["ip", "-batch", "-"], {
    netns: b,
    stdin: ["addr add 198.51.100.2/24 dev eth0", "link set eth0 up"].join("\n") + "\n",
  });
  if (options.wgMtu === undefined) return pair;
  const wg = new WireGuardControl(runner);
  const keys = [await generateKeyPair(), await generateKeyPair()];
  const ends = [
    { ns: a, name: `${scratch.prefix.replaceAll("-", "")}${tag}a`, addr: "10.201.0.1" },
    { ns: b, name: `${scratch.prefix.replaceAll("-", "")}${tag}b`, addr: "10.201.0.2" },
  ];
  for (const [i, e] of ends.entries()) {
    const other = ends[1 - i]!;
    await wg.create(e.name, { netns: e.ns, mtu: options.wgMtu });
    await scratch.noteDaemons();
    await wg.configure(e.name, {
      privateKey: keys[i]!.privateKey,
      listenPort: 51820,
      peers: [{
        publicKey: keys[1 - i]!.publicKey,
        endpoint: `${i === 0 ? pair.underlayB : pair.underlayA}:51820`,
        allowedIps: [`${other.addr}/32`],
      }],
    }, { netns: e.ns });
    await runner.run(["ip", "-batch", "-"], {
      netns: e.ns,
      stdin: [
        `addr add ${e.addr}/32 dev ${e.name}`,
        `link set ${e.name} up`,
        `route add ${other.addr}/32 dev ${e.name}`,
      ].join("\n") + "\n",
    });
  }
  return {
    ...pair,
    wgA: ends[0]!.name,
    wgB: ends[1]!.name,
    tunnelA: "10.201.0.1",
    tunnelB: "10.201.0.2",
  };
}

async function linkMtu(ns: string, dev: string): Promise<number> {
  const r = await runner.run(["ip", "-j", "link", "show", "dev", dev], { netns: ns });
  return (JSON.parse(r) as { mtu: number }[])[0]?.mtu ?? NaN;
}

// ---------------------------------------------------------------------------
// The benchmark.

interface Case {
  key: string;
  label: string;
  client: string;
  server: string;
  addr: string;
  /** Every namespace a packet crosses, for the fragmentation counters. */
  path: string[];
}

interface CaseResult {
  tput: Throughput;
  rtt: Rtt;
  hops: number;
  frag: { total: number; where: string[] };
}

async function measureCase(
  scratch: Scratch,
  c: Case,
  wgIfaces: readonly WgIface[],
): Promise<CaseResult> {
  await waitReachable(c.client, c.addr);
  const frag0 = await fragCounters(c.path);
  const rtt = await pingRtt(c.client, c.addr);
  const tx0 = await wgTx(wgIfaces);
  const tput = await iperf(scratch, c.server, c.client, c.addr);
  const tx1 = await wgTx(wgIfaces);
  const frag = fragDelta(frag0, await fragCounters(c.path));
  let hops = 0;
  for (const [k, v] of tx1) {
    if (tput.bytes > 0 && v - (tx0.get(k) ?? 0) >= HOP_SHARE * tput.bytes) hops++;
  }
  say(
    `dataplane: ${c.key}: ${
      tput.gbps.toFixed(3)
    } Gbit/s, rtt p50 ${rtt.p50} ms p99 ${rtt.p99} ms, ` +
      `${hops} encryption(s), fragments ${frag.total}`,
  );
  return { tput, rtt, hops, frag };
}

/** Creation names of the WireGuard interfaces (wireguard-go daemons) living in a namespace. */
async function wgNamesIn(ns: string): Promise<string[]> {
  return (await procsInNetns(ns, "wireguard-go")).map((p) => p.argv[1] ?? "").filter((n) => n);
}

export async function run(): Promise<BenchRow[]> {
  if (Deno.uid() !== 0) {
    return [{ bench: "dataplane", name: "skipped", value: NaN, unit: "", note: "needs root" }];
  }
  for (const tool of ["iperf3", "ping", "ss", "wg", "wireguard-go", "nsenter"]) {
    const r = await runner.exec(["sh", "-c", `command -v ${tool}`]);
    if (r.code !== 0) {
      return [{
        bench: "dataplane",
        name: "skipped",
        value: NaN,
        unit: "",
        note: `${tool} missing`,
      }];
    }
  }
  const t0 = performance.now();
  return await inLab("dataplane", "d", async (lab, scratch) => {
    await lab.startCluster();
    // Nodes 1 and 2 keep every pod packet on the hub; nodes 3 and 4 make
    // direct paths between pods that talk (the default).
    const hub = { joinArgs: ["--pod-paths", "hub"] };
    const n1: LabNodeState = await lab.addNode(1, hub);
    const n2: LabNodeState = await lab.addNode(2, hub);
    const n3: LabNodeState = await lab.addNode(3);
    const n4: LabNodeState = await lab.addNode(4);
    const p1: LabPod = await lab.addPod(n1, 1);
    const p2: LabPod = await lab.addPod(n2, 1);
    const p3: LabPod = await lab.addPod(n1, 2);
    const q1: LabPod = await lab.addPod(n3, 1);
    const q2: LabPod = await lab.addPod(n4, 1);
    const q3: LabPod = await lab.addPod(n3, 2);
    const kernel = n1.backend === "kernel";
    const impl = kernel ? "kernel WireGuard" : "wireguard-go";
    const v4 = (p: LabPod) => p.addresses.find((a) => !a.includes(":"))!;
    const podMtu = await linkMtu(p1.netns, p1.ifname);
    const nodeMtu = await linkMtu(n1.netns, n1.iface);
    const underlayMtu = await linkMtu(n1.netns, "eth0");
    const ref = await buildRefPair(scratch, "w", { wgMtu: podMtu });
    const vethMtu = await linkMtu(ref.a, "eth0");
    const mtuLine =
      `MTU: pod eth0 ${podMtu}, node ${n1.iface} ${nodeMtu}, node underlay veth ${underlayMtu}; ` +
      `reference tunnel ${podMtu} over a veth of ${vethMtu}`;
    say(`dataplane: ${mtuLine} (lab ready in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);

    const cases: Case[] = [
      {
        key: "cross",
        label: "pod → pod, cross-node, hub path",
        client: p1.netns,
        server: p2.netns,
        addr: v4(p2),
        path: [p1.netns, n1.netns, lab.underlay, n2.netns, p2.netns],
      },
      {
        key: "same",
        label: "pod → pod, same node, hub path",
        client: p1.netns,
        server: p3.netns,
        addr: v4(p3),
        path: [p1.netns, n1.netns, p3.netns],
      },
      {
        key: "dcross",
        label: "pod → pod, cross-node, direct path",
        client: q1.netns,
        server: q2.netns,
        addr: v4(q2),
        path: [q1.netns, n3.netns, lab.underlay, n4.netns, q2.netns],
      },
      {
        key: "dsame",
        label: "pod → pod, same node, direct path",
        client: q1.netns,
        server: q3.netns,
        addr: v4(q3),
        path: [q1.netns, n3.netns, q3.netns],
      },
      {
        key: "wgref",
        label: `hand-built ${impl} tunnel over a veth`,
        client: ref.a,
        server: ref.b,
        addr: ref.tunnelB!,
        path: [ref.a, ref.b],
      },
      {
        key: "veth",
        label: "plain veth",
        client: ref.a,
        server: ref.b,
        addr: ref.underlayB,
        path: [ref.a, ref.b],
      },
    ];
    // Every WireGuard interface of this run: the nodes', the pods' and the
    // reference tunnel's. wireguard-go's are reached by their creation name
    // from anywhere (their daemons stay in the node namespace); kernel ones
    // by their name in the namespace they are in.
    // The direct pairs first: their promotion is timed, and checked for loss.
    const promotions = await promotionRuns(lab, n3, n4);
    for (const c of cases.filter((c) => c.key.startsWith("d"))) {
      await waitReachable(c.client, c.addr);
      await runner.exec(["ping", "-q", "-c", "5", "-i", "0.05", c.addr], { netns: c.client });
      await waitDirect(n3, c.client === q1.netns ? q1 : q3, c.addr);
    }
    const wgIfaces = async (): Promise<WgIface[]> =>
      kernel
        ? [
          { name: n1.iface, netns: n1.netns },
          { name: n2.iface, netns: n2.netns },
          { name: n3.iface, netns: n3.netns },
          { name: n4.iface, netns: n4.netns },
          ...(await Promise.all(
            [p1, p2, p3, q1, q2, q3].map(async (p) =>
              (await wgLinksIn(p.netns)).map((name) => ({ name, netns: p.netns }))
            ),
          )).flat(),
          { name: ref.wgA!, netns: ref.a },
          { name: ref.wgB!, netns: ref.b },
        ]
        : [
          ...(await Promise.all([n1, n2, n3, n4].map((n) => wgNamesIn(n.netns)))).flat(),
          ref.wgA!,
          ref.wgB!,
        ].map((name) => ({ name, netns: n1.netns }));
    const label = (key: string) => cases.find((c) => c.key === key)!.label;
    const res: Record<string, CaseResult> = {};
    for (const c of cases) res[c.key] = await measureCase(scratch, c, await wgIfaces());
    const [cross, same, wgref, veth] = [res.cross!, res.same!, res.wgref!, res.veth!];
    const [dcross, dsame] = [res.dcross!, res.dsame!];

    const rows: BenchRow[] = [];
    const row = (
      name: string,
      value: number,
      unit: string,
      reference: string,
      referenceValue: number,
      note?: string,
    ): BenchRow => ({
      bench: "dataplane",
      name,
      value,
      unit,
      reference,
      referenceValue,
      ...(note ? { note } : {}),
    });
    const REF_WG = `${impl} tunnel, veth`;
    const REF_VETH = "plain veth";
    const tputNote = (r: CaseResult, extra = "") =>
      (r.tput.error ? `iperf3 failed: ${r.tput.error}; ` : "") +
      `ratio < 1 = slower; ${r.tput.retransmits} retransmits${extra}`;
    const hopsName = (r: CaseResult) => `${r.hops} WG encryption${r.hops === 1 ? "" : "s"}`;
    rows.push(
      row(
        `TCP throughput, ${cases[0]!.label} (${hopsName(cross)})`,
        cross.tput.gbps,
        "Gbit/s",
        REF_WG,
        wgref.tput.gbps,
        tputNote(cross, kernel ? "" : "; 4 wireguard-go daemons and iperf3 share 2 cores"),
      ),
      row(
        `TCP throughput, ${cases[1]!.label} (${hopsName(same)})`,
        same.tput.gbps,
        "Gbit/s",
        REF_WG,
        wgref.tput.gbps,
        tputNote(same),
      ),
      row(
        `TCP throughput, ${cases[0]!.label}`,
        cross.tput.gbps,
        "Gbit/s",
        REF_VETH,
        veth.tput.gbps,
        "ratio < 1 = slower",
      ),
      row(
        `TCP throughput, ${label("wgref")} (${hopsName(wgref)})`,
        wgref.tput.gbps,
        "Gbit/s",
        REF_VETH,
        veth.tput.gbps,
        tputNote(wgref, `; the cost of ${impl} itself`),
      ),
    );
    rows.push(
      row(
        `TCP throughput, ${label("dcross")} (${hopsName(dcross)})`,
        dcross.tput.gbps,
        "Gbit/s",
        REF_WG,
        wgref.tput.gbps,
        tputNote(dcross, "; aim ≥ 0.9× the tunnel"),
      ),
      row(
        `TCP throughput, ${label("dsame")} (${hopsName(dsame)})`,
        dsame.tput.gbps,
        "Gbit/s",
        REF_WG,
        wgref.tput.gbps,
        tputNote(dsame, "; aim ≥ 0.9× the tunnel"),
      ),
      row(
        `ping RTT p50, ${label("dcross")}`,
        dcross.rtt.p50,
        "ms",
        REF_WG,
        wgref.rtt.p50,
      ),
      row(
        `ping RTT p50, ${label("dsame")}`,
        dsame.rtt.p50,
        "ms",
        REF_WG,
        wgref.rtt.p50,
      ),
      row(
        `WireGuard encryptions per packet, ${label("dcross")}`,
        dcross.hops,
        "",
        REF_WG,
        wgref.hops,
        "measured from peer tx counters; design: pod direct wg → other pod's direct wg = 1",
      ),
      row(
        `WireGuard encryptions per packet, ${label("dsame")}`,
        dsame.hops,
        "",
        REF_WG,
        wgref.hops,
        "design: 1, over the node's loopback",
      ),
    );
    rows.push(...await ringRun(lab));
    for (const [kind, list] of Object.entries(promotions)) {
      const ms = list.map((x) => x.ms).sort((x, y) => x - y);
      const lost = list.reduce((n, x) => n + x.lost, 0);
      const sent = list.reduce((n, x) => n + x.sent, 0);
      rows.push(
        {
          bench: "dataplane",
          name: `first packet → direct path, ${kind} (p50 of ${ms.length} pairs)`,
          value: quantile(ms, 0.5),
          unit: "ms",
          note: `p99 ${quantile(ms, 0.99)} ms; the node reads its flow sets at most every 250 ms`,
        },
        {
          bench: "dataplane",
          name: `packets lost at promotion, ${kind}, ${PROMOTION_PPS} pkt/s`,
          value: lost,
          unit: "",
          note: `${lost} of ${sent} pings over ${ms.length} promotions; aim 0`,
        },
      );
    }
    const lossNote = (r: CaseResult) =>
      r.rtt.received < r.rtt.sent ? `${r.rtt.sent - r.rtt.received}/${r.rtt.sent} lost` : undefined;
    for (const [key, p] of [["p50", 50], ["p99", 99]] as const) {
      const pick = (r: CaseResult) => p === 50 ? r.rtt.p50 : r.rtt.p99;
      rows.push(
        row(
          `ping RTT ${key}, ${cases[0]!.label} (${PING_COUNT} × 10 ms)`,
          pick(cross),
          "ms",
          REF_WG,
          pick(wgref),
          lossNote(cross),
        ),
        row(
          `ping RTT ${key}, ${cases[1]!.label}`,
          pick(same),
          "ms",
          REF_WG,
          pick(wgref),
          lossNote(same),
        ),
        row(
          `ping RTT ${key}, ${label("wgref")}`,
          pick(wgref),
          "ms",
          REF_VETH,
          pick(veth),
          lossNote(wgref),
        ),
      );
    }
    rows.push(
      row(
        `WireGuard encryptions per packet, ${cases[0]!.label}`,
        cross.hops,
        "",
        REF_WG,
        wgref.hops,
        "measured from peer tx counters; design: pod wg → node wgcni0 → other node's wgcni0 → pod wg = 3",
      ),
      row(
        `WireGuard encryptions per packet, ${cases[1]!.label}`,
        same.hops,
        "",
        REF_WG,
        wgref.hops,
        "design: pod wg → node wgcni0 → pod wg = 2 (every pod packet is encrypted, neighbours too)",
      ),
    );
    for (const c of cases) {
      const f = res[c.key]!.frag;
      rows.push({
        bench: "dataplane",
        name:
          `IP fragments created + reassemblies (v4+v6), ${c.label}, ${c.path.length} namespaces`,
        value: f.total,
        unit: "",
        note: f.total === 0
          ? "expected 0 at the configured MTU: met"
          : `expected 0, not met: ${f.where.join(", ")}`,
      });
    }
    rows.push({
      bench: "dataplane",
      name: "MTU of the pod interface",
      value: podMtu,
      unit: "bytes",
      note: mtuLine,
    });
    return rows;
  });
}

/** Pings sent per second in the promotion runs. */
const PROMOTION_PPS = 1000;
const PROMOTION_PAIRS = 5;

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

/** The WireGuard links of a namespace (kernel backend: pod eth0 and direct interfaces). */
async function wgLinksIn(ns: string): Promise<string[]> {
  const r = await runner.exec(["ip", "-d", "-j", "link", "show", "type", "wireguard"], {
    netns: ns,
  });
  if (r.code !== 0) return [];
  return (JSON.parse(r.stdout || "[]") as { ifname: string }[]).map((l) => l.ifname);
}

/** The direct peers of a pod (each with its addresses), as its node reports them. */
async function directPeersOf(node: LabNodeState, pod: LabPod): Promise<{ addresses: string[] }[]> {
  const c = createLocalClient(node.socket);
  try {
    const pods = (await c.allocations()).pods as {
      containerId: string;
      direct?: { addresses: string[] }[];
    }[];
    return pods.find((p) => p.containerId === pod.containerId)?.direct ?? [];
  } finally {
    c.close();
  }
}

/** Every address of a pod's direct peers. */
async function directOf(node: LabNodeState, pod: LabPod): Promise<string[]> {
  return (await directPeersOf(node, pod)).flatMap((d) => d.addresses);
}

async function waitDirect(node: LabNodeState, pod: LabPod, to: string, ms = 30_000) {
  const end = Date.now() + ms;
  while (!(await directOf(node, pod)).includes(to)) {
    if (Date.now() > end) throw new Error(`${pod.name} → ${to} never became direct`);
    await sleep(20);
  }
}

/**
 * Fresh pod pairs on the direct nodes, cross-node and on one node: a flow of
 * pings at {@linkcode PROMOTION_PPS} starts, the time until the pod's node
 * reports the direct peer is taken, and the pings lost over the switch are
 * counted.
 */
async function promotionRuns(lab: Lab, n3: LabNodeState, n4: LabNodeState) {
  const out: Record<string, { ms: number; lost: number; sent: number }[]> = {
    "cross-node": [],
    "same node": [],
  };
  for (let i = 0; i < PROMOTION_PAIRS; i++) {
    const src = await lab.addPod(n3, 10 + i);
    for (
      const [kind, node, idx] of [["cross-node", n4, 10 + i], ["same node", n3, 20 + i]] as const
    ) {
      const dst = await lab.addPod(node, idx);
      const addr = dst.addresses.find((a) => !a.includes(":"))!;
      // Nothing has gone between the two yet: the flow's first packet is the
      // pair's first, and the switch happens while it runs.
      await sleep(1000);
      const count = 2 * PROMOTION_PPS;
      const t0 = performance.now();
      const flow = runner.exec([
        "ping",
        "-q",
        "-n",
        "-i",
        String(1 / PROMOTION_PPS),
        "-c",
        String(count),
        "-W",
        "2",
        addr,
      ], { netns: src.netns });
      await waitDirect(n3, src, addr);
      const ms = Math.round(performance.now() - t0);
      const r = await flow;
      const m = r.stdout.match(/(\d+) packets transmitted, (\d+) received/);
      const sent = Number(m?.[1] ?? count), got = Number(m?.[2] ?? 0);
      out[kind]!.push({ ms, lost: sent - got, sent });
      say(`dataplane: promotion ${kind} ${src.name} → ${addr}: ${ms} ms, ${sent - got} lost`);
    }
  }
  return out;
}

/** Pods in the ring (`WGCNI_BENCH_RING_PODS` overrides, e.g. in a slow guest). */
const RING_PODS = Number(Deno.env.get("WGCNI_BENCH_RING_PODS") ?? "100");
/** The ring nodes' idle time. */
const RING_IDLE_S = 10;
/** How long the ring's pods talk at most. */
const RING_TALK_S = Number(Deno.env.get("WGCNI_BENCH_RING_TALK_S") ?? "60");

/**
 * Pods in a ring over two more nodes (every other pod on each, so each pod's
 * two neighbours are on the other node), each pinging the next: the direct
 * peers per pod while they talk, and once they have been idle.
 */
export async function ringRun(lab: Lab): Promise<BenchRow[]> {
  const joinArgs = ["--direct-idle", `${RING_IDLE_S}s`];
  const nodes = [await lab.addNode(5, { joinArgs }), await lab.addNode(6, { joinArgs })];
  const pods: { node: LabNodeState; pod: LabPod }[] = [];
  for (let i = 0; i < RING_PODS; i++) {
    const node = nodes[i % 2]!;
    pods.push({ node, pod: await lab.addPod(node, 100 + i) });
  }
  const v4 = (p: LabPod) => p.addresses.find((a) => !a.includes(":"))!;
  const counts = async () =>
    await Promise.all(pods.map(async ({ node, pod }) => (await directPeersOf(node, pod)).length));
  // Every pod pings the next for up to RING_TALK_S; the count is read once
  // every pod has both neighbours (or when the talk ends).
  const t0 = performance.now();
  const talk = Promise.all(pods.map(({ pod }, i) =>
    runner.exec([
      "ping",
      "-q",
      "-n",
      "-i",
      "0.2",
      "-w",
      String(RING_TALK_S),
      v4(pods[(i + 1) % pods.length]!.pod),
    ], { netns: pod.netns })
  ));
  let talking = await counts();
  while (talking.some((n) => n < 2) && performance.now() - t0 < (RING_TALK_S - 2) * 1000) {
    await sleep(500);
    talking = await counts();
  }
  const talkMs = performance.now() - t0;
  await talk;
  const idleStart = performance.now();
  let idle = talking;
  while (idle.some((n) => n > 0) && performance.now() - idleStart < (RING_IDLE_S + 60) * 1000) {
    await sleep(1000);
    idle = await counts();
  }
  const idleMs = performance.now() - idleStart;
  const stats = (xs: number[]) => ({
    mean: xs.reduce((a, b) => a + b, 0) / xs.length,
    max: Math.max(...xs),
  });
  const [t, d] = [stats(talking), stats(idle)];
  say(
    `dataplane: ring of ${pods.length}: direct peers per pod ${t.mean.toFixed(2)} (max ${t.max}) ` +
      `after ${(talkMs / 1000).toFixed(1)} s of talk; ${d.mean.toFixed(2)} (max ${d.max}) ` +
      `${(idleMs / 1000).toFixed(0)} s after`,
  );
  return [
    {
      bench: "dataplane",
      name: `direct peers per pod, ${pods.length} pods pinging the next in a ring (mean)`,
      value: t.mean,
      unit: "",
      note: `max ${t.max}, min ${Math.min(...talking)}, read ${
        (talkMs / 1000).toFixed(1)
      } s after the talk began; expected 2 (the pod before and the pod after), whatever the cluster's size`,
    },
    {
      bench: "dataplane",
      name: `direct peers per pod, the same ${pods.length} pods idle for ${RING_IDLE_S} s (mean)`,
      value: d.mean,
      unit: "",
      note: `max ${d.max}, ${(idleMs / 1000).toFixed(0)} s after the talk ended; expected 0`,
    },
  ];
}

if (import.meta.main) {
  Deno.stdout.writeSync(enc.encode(markdownTable(await run()) + "\n"));
}
