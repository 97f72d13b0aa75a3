/**
 * Cluster manager benchmark, all on loopback against a real
 * `wgcni cluster serve` process:
 *
 * - registrations per second (1,000 nodes, 64 requests in flight);
 * - watch fan-out with 1,000, 5,000 and 10,000 watch streams open: for each new
 *   node, the time from sending its registration until every stream has its
 *   delta (p50, p99, max over the registrations), the bytes one delta costs
 *   on one stream, the manager's CPU time per change (utime + stime of the
 *   server process from /proc/PID/stat, before and after the registrations;
 *   also with no stream open) and the server's resident memory;
 * - cold join: on a fresh manager, 1,000 nodes each registering with the join
 *   token and then opening its watch from nothing with its node credential,
 *   all started at once; the time until every node has all 1,000 nodes in
 *   its peer list.
 *
 * The streams are held by a few watcher processes (this file run with
 * `--watch-worker` or `--join-worker`), so their parsing does not share a
 * thread with the measuring side. Run alone: `deno run -A bench/cluster.ts`.
 */
import type { BenchRow } from "./_report.ts";
import { join } from "node:path";
import { ClusterClient } from "../lib/api/cluster_client.ts";
import { readTokens, startBenchServer } from "../tests/unit/_cluster_process.ts";
import {
  aimNote,
  cpuSeconds,
  JsonChild,
  killPid,
  now,
  onInterrupt,
  percentile,
  waitForGo,
} from "./api.ts";

const REGISTRATIONS = 1000;
const IN_FLIGHT = 64;
const WATCHER_LEVELS = [1000, 5000, 10_000];
const WORKERS = 4;
const PROBES = 100;
const COLD_JOIN_NODES = 1000;
const COLD_JOIN_TIMEOUT_MS = 120_000;
/** The issue's aims: every node has a change within 1 s at 10,000 nodes; a delta ≤ 1 KB. */
const AIM_P99_MS = 1000;
const AIM_P99_LEVEL = 10_000;
/** The cold join's aim: 1,000 nodes have each other within 5 s. */
const AIM_COLD_JOIN_S = 5;
const AIM_DELTA_BYTES = 1024;
const SELF = new URL(import.meta.url).pathname;

function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
}

function rssMiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? NaN);
  return kb / 1024;
}

function metric(text: string, name: string): number {
  return Number(text.match(new RegExp(`^${name} (\\S+)$`, "m"))?.[1] ?? NaN);
}

/** A watcher process holding `count` streams, reporting as JSON lines. */
function watcherProcess(url: string, token: string, count: number, since: number): JsonChild {
  return new JsonChild(
    [SELF, "--watch-worker", url, token, String(count), String(since)],
    { fdLimit: count + 256 },
  );
}

/** A worker's ends: aborted (and exits) on SIGTERM; reports one JSON line each on stdout. */
function workerIo(): { stop: AbortController; report: (o: unknown) => void } {
  const stop = new AbortController();
  Deno.addSignalListener("SIGTERM", () => {
    stop.abort();
    Deno.exit(0);
  });
  const enc = new TextEncoder();
  return {
    stop,
    report: (o) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n")),
  };
}

/** Worker mode: hold `count` watch streams and report when every one has each revision. */
async function watchWorker(url: string, token: string, count: number, since: number) {
  const api = new ClusterClient(url, { token });
  const { stop, report } = workerIo();
  let ready = 0;
  let batchReady = Promise.withResolvers<void>();
  const got = new Map<number, { n: number; first: number; last: number }>();
  const one = async () => {
    let first = true;
    const onPing = () => {
      if (first) {
        first = false;
        if (++ready === count) report({ ready: count });
        if (ready % 100 === 0 || ready === count) batchReady.resolve();
      }
    };
    for await (const e of api.watch(since, stop.signal, { onPing })) {
      const t = now();
      const g = got.get(e.revision) ?? { n: 0, first: t, last: t };
      g.n++;
      g.last = t;
      got.set(e.revision, g);
      if (g.n === count) {
        report({ revision: e.revision, first: g.first, last: g.last });
        got.delete(e.revision);
      }
    }
  };
  // Open in batches of 100, each once the one before has its snapshot: every
  // new stream starts with a snapshot of every node, and ten thousand at once
  // would only measure how the server copes with that.
  const tasks: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    tasks.push(
      one().catch((err) => {
        Deno.stderr.writeSync(
          new TextEncoder().encode(`watcher failed: ${(err as Error).message}\n`),
        );
      }),
    );
    if (i % 100 === 99) {
      while (ready < i + 1) {
        await batchReady.promise;
        batchReady = Promise.withResolvers<void>();
      }
    }
  }
  await Promise.all(tasks);
}

/** Registers `count` nodes with `inFlight` requests at a time; returns registrations per second. */
async function registerMany(
  join: ClusterClient,
  options: { count: number; inFlight: number; prefix: string },
): Promise<number> {
  let next = 0;
  const t0 = now();
  const lane = async () => {
    while (next < options.count) {
      const i = next++;
      await join.register({
        name: `${options.prefix}-${i}`,
        publicKey: randomKey(),
        endpoint: `192.0.2.${(i % 250) + 1}:51820`,
      });
    }
  };
  await Promise.all(Array.from({ length: options.inFlight }, lane));
  return options.count / ((now() - t0) / 1000);
}

/**
 * Join worker mode: after `go` on stdin, `count` nodes each register with the
 * join token and open their watch from nothing with their node credential;
 * reports `{registered, full}` (when each node registered and when its peer
 * list first held `total` nodes), then keeps the streams open.
 */
async function joinWorker(
  url: string,
  token: string,
  count: number,
  prefix: string,
  total: number,
) {
  const { stop, report } = workerIo();
  const joiner = new ClusterClient(url, { token });
  report({ ready: count });
  await waitForGo();
  const registered: number[] = [];
  const full: number[] = [];
  const one = async (i: number) => {
    const reg = await joiner.register({
      name: `${prefix}-${i}`,
      publicKey: randomKey(),
      endpoint: `192.0.2.${(i % 250) + 1}:51820`,
    });
    registered.push(now());
    const names = new Set<string>();
    let done = false;
    for await (const e of joiner.withToken(reg.credential).watch(undefined, stop.signal)) {
      if (e.type === "snapshot") {
        for (const p of e.peers) if (p.kind === "node") names.add(p.name);
      } else if (e.type === "upsert" && e.peer.kind === "node") {
        names.add(e.peer.name);
      }
      if (!done && names.size >= total) {
        done = true;
        full.push(now());
        if (full.length === count) report({ registered, full });
      }
    }
  };
  const tasks: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    tasks.push(
      one(i).catch((err) => {
        report({ error: (err as Error).message });
      }),
    );
    // Started in batches so the server's accept queue never overflows.
    if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
  }
  await Promise.all(tasks);
}

/** A disposable that drops an interrupt cleanup at the end of its scope. */
function forgetting(forget: () => void): Disposable {
  return { [Symbol.dispose]: forget };
}

/** Fails after `ms` unless `p` settles first. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The cold join of {@linkcode COLD_JOIN_NODES} nodes on a fresh manager in `dir`. */
async function coldJoin(dir: string): Promise<BenchRow[]> {
  await using server = await startBenchServer(join(dir, "data"), { fds: COLD_JOIN_NODES + 1024 });
  using _forget = forgetting(onInterrupt(() => killPid(server.pid)));
  const tokens = readTokens(join(dir, "data"));
  const per = Math.ceil(COLD_JOIN_NODES / WORKERS);
  const workers = Array.from({ length: WORKERS }, (_, i) => {
    const count = Math.min(per, COLD_JOIN_NODES - i * per);
    return new JsonChild([
      SELF,
      "--join-worker",
      server.url,
      tokens.join,
      String(count),
      `cold${i}`,
      String(COLD_JOIN_NODES),
    ], { stdin: true, fdLimit: count + 256 });
  });
  try {
    await Promise.all(workers.map((w) => w.next()));
    const c0 = cpuSeconds(server.pid);
    const w0 = workers.reduce((n, w) => n + cpuSeconds(w.pid), 0);
    const t0 = now();
    await Promise.all(workers.map((w) => w.send("go")));
    const reports = await within(
      Promise.all(workers.map((w) => w.next())),
      COLD_JOIN_TIMEOUT_MS,
      "the cold join",
    ) as { registered?: number[]; full?: number[]; error?: string }[];
    const cpu = cpuSeconds(server.pid) - c0;
    const workerCpu = workers.reduce((n, w) => n + cpuSeconds(w.pid), 0) - w0;
    const dropped = metric(
      await new ClusterClient(server.url, { token: tokens.admin }).metrics(),
      "wgcni_cluster_watch_dropped_total",
    );
    if (dropped !== 0) throw new Error(`${dropped} watch streams were dropped as too slow`);
    const failed = reports.find((r) => r.error !== undefined);
    if (failed) throw new Error(`a joining node failed: ${failed.error}`);
    const full = reports.flatMap((r) => r.full!).map((t) => (t - t0) / 1000).sort((a, b) => a - b);
    const registered = Math.max(...reports.flatMap((r) => r.registered!)) - t0;
    const all = full[full.length - 1]!;
    return [{
      bench: "cluster",
      name:
        `cold join: ${COLD_JOIN_NODES} nodes register and watch from nothing → all have every node`,
      value: Number(all.toFixed(2)),
      unit: "s",
      note: `${aimNote(all <= AIM_COLD_JOIN_S, `≤ ${AIM_COLD_JOIN_S} s`)}; per node p50 ${
        percentile(full, 50).toFixed(2)
      } s; all registered after ${(registered / 1000).toFixed(2)} s; CPU: manager ${
        cpu.toFixed(1)
      } s, the ${COLD_JOIN_NODES} simulated nodes (${WORKERS} processes, wgcni's ClusterClient) ${
        workerCpu.toFixed(1)
      } s, on ${navigator.hardwareConcurrency} cores`,
    }];
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await server.stop("SIGTERM");
  }
}

/** Manager CPU milliseconds per change over `fn`, which makes `changes` changes. */
async function cpuPerChange(pid: number, changes: number, fn: () => Promise<void>) {
  const c0 = cpuSeconds(pid);
  await fn();
  return ((cpuSeconds(pid) - c0) * 1000) / changes;
}

/** Runs the benchmark and returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-bench-cluster-" });
  using _forgetDir = forgetting(onInterrupt(() => Deno.removeSync(dir, { recursive: true })));
  try {
    // Every simulated node connects from loopback, many with one credential; a
    // level's streams may still be closing on the server when the next opens.
    await using server = await startBenchServer(join(dir, "data"), {
      fds: WATCHER_LEVELS.reduce((a, b) => a + b) + 1024,
    });
    using _forgetServer = forgetting(onInterrupt(() => killPid(server.pid)));
    const tokens = readTokens(join(dir, "data"));
    const admin = new ClusterClient(server.url, { token: tokens.admin });
    const joiner = new ClusterClient(server.url, { token: tokens.join });

    const rate = await registerMany(joiner, {
      count: REGISTRATIONS,
      inFlight: IN_FLIGHT,
      prefix: "reg",
    });
    rows.push({
      bench: "cluster",
      name:
        `registrations (${REGISTRATIONS} nodes, ${IN_FLIGHT} in flight, SQLite synchronous=FULL)`,
      value: Math.round(rate),
      unit: "/s",
    });
    rows.push({
      bench: "cluster",
      name: `server RSS with ${REGISTRATIONS} nodes, no watchers`,
      value: Math.round(rssMiB(server.pid)),
      unit: "MiB",
    });

    let probe = 0;
    const register = () =>
      joiner.register({
        name: `probe-${probe++}`,
        publicKey: randomKey(),
        endpoint: "192.0.2.1:51820",
      });
    const idleCpu = await cpuPerChange(server.pid, PROBES, async () => {
      for (let i = 0; i < PROBES; i++) await register();
    });
    rows.push({
      bench: "cluster",
      name: `manager CPU per change, no stream open (${PROBES} registrations one at a time)`,
      value: Number(idleCpu.toFixed(2)),
      unit: "ms",
    });

    for (const level of WATCHER_LEVELS) {
      const since = (await admin.peers()).revision;
      const per = Math.ceil(level / WORKERS);
      const workers = Array.from(
        { length: WORKERS },
        (_, i) => watcherProcess(server.url, tokens.admin, Math.min(per, level - i * per), since),
      );
      try {
        const tc = now();
        await within(
          Promise.all(workers.map((w) => w.next())),
          COLD_JOIN_TIMEOUT_MS,
          `opening ${level} streams`,
        );
        const connectS = (now() - tc) / 1000;
        const m0 = await admin.metrics();
        if (metric(m0, "wgcni_cluster_watchers") < level) {
          throw new Error(
            `only ${metric(m0, "wgcni_cluster_watchers")} of ${level} watchers are connected`,
          );
        }
        const bytes0 = metric(m0, "wgcni_cluster_watch_bytes_total");
        const allLatencies: number[] = [];
        const firstLatencies: number[] = [];
        const cpuMs = await cpuPerChange(server.pid, PROBES, async () => {
          for (let i = 0; i < PROBES; i++) {
            const t0 = now();
            await register();
            const reports = await Promise.all(workers.map((w) => w.next())) as {
              first: number;
              last: number;
            }[];
            allLatencies.push(Math.max(...reports.map((x) => x.last)) - t0);
            firstLatencies.push(Math.min(...reports.map((x) => x.first)) - t0);
          }
        });
        const m1 = await admin.metrics();
        const bytesPerDelta = (metric(m1, "wgcni_cluster_watch_bytes_total") - bytes0) /
          (PROBES * level);
        allLatencies.sort((a, b) => a - b);
        firstLatencies.sort((a, b) => a - b);
        const rss = rssMiB(server.pid);
        const p99 = percentile(allLatencies, 99);
        const fanOut = `watch fan-out to ${level} streams: registration → all have it`;
        rows.push(
          {
            bench: "cluster",
            name: `${fanOut}, p50`,
            value: Number(percentile(allLatencies, 50).toFixed(1)),
            unit: "ms",
          },
          {
            bench: "cluster",
            name: `${fanOut}, p99`,
            value: Number(p99.toFixed(1)),
            unit: "ms",
            ...(level === AIM_P99_LEVEL
              ? { note: aimNote(p99 <= AIM_P99_MS, `p99 ≤ ${AIM_P99_MS} ms at ${level} nodes`) }
              : {}),
          },
          {
            bench: "cluster",
            name: `${fanOut}, max`,
            value: Number(allLatencies[allLatencies.length - 1]!.toFixed(1)),
            unit: "ms",
          },
          {
            bench: "cluster",
            name: `watch fan-out to ${level} streams: registration → first has it, p50`,
            value: Number(percentile(firstLatencies, 50).toFixed(1)),
            unit: "ms",
          },
          {
            bench: "cluster",
            name: `bytes per delta per stream (${level} streams)`,
            value: Math.round(bytesPerDelta),
            unit: "B",
            note: aimNote(bytesPerDelta <= AIM_DELTA_BYTES, "≤ 1 KB"),
          },
          {
            bench: "cluster",
            name: `manager CPU per change with ${level} streams open`,
            value: Number(cpuMs.toFixed(2)),
            unit: "ms",
            note: `registration and fan-out, ${PROBES} changes one at a time; ${
              ((cpuMs - idleCpu) * 1000 / level).toFixed(1)
            } µs per stream over the no-stream figure`,
          },
          {
            bench: "cluster",
            name: `server RSS with ${level} streams open`,
            value: Math.round(rss),
            unit: "MiB",
          },
          {
            bench: "cluster",
            name: `time to open ${level} streams (${WORKERS} watcher processes)`,
            value: Number(connectS.toFixed(2)),
            unit: "s",
          },
        );
      } finally {
        await Promise.all(workers.map((w) => w.stop()));
      }
    }
    await server.stop("SIGTERM");
    rows.push(...await coldJoin(join(dir, "cold")));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  return rows;
}

if (import.meta.main) {
  const args = Deno.args;
  if (args[0] === "--watch-worker") {
    await watchWorker(args[1]!, args[2]!, Number(args[3]), Number(args[4]));
  } else if (args[0] === "--join-worker") {
    await joinWorker(args[1]!, args[2]!, Number(args[3]), args[4]!, Number(args[5]));
  } else {
    const rows = await run();
    const enc = new TextEncoder();
    for (const r of rows) {
      Deno.stdout.writeSync(
        enc.encode(`${r.name}: ${r.value} ${r.unit}${r.note ? ` (${r.note})` : ""}\n`),
      );
    }
  }
}
