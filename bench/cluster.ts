/**
 * Cluster manager benchmark, all on loopback against a real
 * `wgcni cluster serve` process:
 *
 * - registrations per second (1,000 nodes, 64 requests in flight);
 * - watch fan-out with 1,000 and 5,000 watch streams open: for each new
 *   node, the time from sending its registration until every stream has its
 *   delta (p50, p99 over the registrations), the bytes one delta costs on one
 *   stream, and the server's resident memory.
 *
 * The streams are held by a few watcher processes (this file run with
 * `--watch-worker`), so their parsing does not share a thread with the
 * measuring side. Run alone: `deno run -A bench/cluster.ts`.
 */
import type { BenchRow } from "./_report.ts";
import { join } from "node:path";
import { ClusterClient } from "../lib/api/cluster_client.ts";
import { readTokens, startServer, withFdLimit } from "../tests/unit/_cluster_process.ts";

const REGISTRATIONS = 1000;
const IN_FLIGHT = 64;
const WATCHER_LEVELS = [1000, 5000];
const WORKERS = 4;
const PROBES = 100;

const now = () => performance.timeOrigin + performance.now();

function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
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
class WatcherProcess {
  readonly #child: Deno.ChildProcess;
  readonly #lines: AsyncIterator<string>;
  #buf = "";
  #reader: ReadableStreamDefaultReader<string>;

  constructor(url: string, token: string, count: number, since: number) {
    const argv = withFdLimit(count + 256, [
      Deno.execPath(),
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--watch-worker",
      url,
      token,
      String(count),
      String(since),
    ]);
    this.#child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdout: "piped",
      stderr: "inherit",
      stdin: "null",
    }).spawn();
    this.#reader = this.#child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#lines = this.#readLines();
  }

  async *#readLines(): AsyncGenerator<string> {
    while (true) {
      let nl: number;
      while ((nl = this.#buf.indexOf("\n")) >= 0) {
        const line = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        yield line;
      }
      const { value, done } = await this.#reader.read();
      if (done) return;
      this.#buf += value;
    }
  }

  /** The next report of the worker. */
  async next(): Promise<Record<string, number>> {
    const r = await this.#lines.next();
    if (r.done) throw new Error("a watcher process ended early");
    return JSON.parse(r.value);
  }

  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await this.#reader.cancel().catch(() => {});
    await this.#child.status;
  }
}

/** Worker mode: hold `count` watch streams and report when every one has each revision. */
async function watchWorker(url: string, token: string, count: number, since: number) {
  const api = new ClusterClient(url, { token });
  const stop = new AbortController();
  Deno.addSignalListener("SIGTERM", () => {
    stop.abort();
    Deno.exit(0);
  });
  const enc = new TextEncoder();
  const report = (o: unknown) => Deno.stdout.writeSync(enc.encode(JSON.stringify(o) + "\n"));
  let ready = 0;
  const got = new Map<number, { n: number; first: number; last: number }>();
  const one = async () => {
    let first = true;
    const onPing = () => {
      if (first) {
        first = false;
        if (++ready === count) report({ ready: count });
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
  // Open in batches so the server's accept queue never overflows.
  const tasks: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    tasks.push(
      one().catch((err) => {
        Deno.stderr.writeSync(enc.encode(`watcher failed: ${(err as Error).message}\n`));
      }),
    );
    if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
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

/** Runs the benchmark and returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-bench-cluster-" });
  try {
    await using server = await startServer(join(dir, "data"), [
      "--listen",
      "127.0.0.1:0",
      "--pod-cidr",
      "10.128.0.0/10,fd00:128::/48",
      "--keepalive",
      "1h",
    ], { fdLimit: Math.max(...WATCHER_LEVELS) + 1024, env: { WGCNI_LOG_LEVEL: "info" } });
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
    for (const level of WATCHER_LEVELS) {
      const since = (await admin.peers()).revision;
      const per = Math.ceil(level / WORKERS);
      const workers = Array.from(
        { length: WORKERS },
        (_, i) =>
          new WatcherProcess(
            server.url,
            tokens.admin,
            Math.min(per, level - i * per),
            since,
          ),
      );
      try {
        const tc = now();
        await Promise.all(workers.map((w) => w.next()));
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
        for (let i = 0; i < PROBES; i++) {
          const t0 = now();
          const r = await joiner.register({
            name: `probe-${probe++}`,
            publicKey: randomKey(),
            endpoint: "192.0.2.1:51820",
          });
          void r;
          const reports = await Promise.all(workers.map((w) => w.next()));
          allLatencies.push(Math.max(...reports.map((x) => x.last!)) - t0);
          firstLatencies.push(Math.min(...reports.map((x) => x.first!)) - t0);
        }
        const m1 = await admin.metrics();
        const bytesPerDelta = (metric(m1, "wgcni_cluster_watch_bytes_total") - bytes0) /
          (PROBES * level);
        allLatencies.sort((a, b) => a - b);
        firstLatencies.sort((a, b) => a - b);
        const rss = rssMiB(server.pid);
        rows.push(
          {
            bench: "cluster",
            name: `watch fan-out to ${level} streams: registration → all have it, p50`,
            value: Number(percentile(allLatencies, 50).toFixed(1)),
            unit: "ms",
          },
          {
            bench: "cluster",
            name: `watch fan-out to ${level} streams: registration → all have it, p99`,
            value: Number(percentile(allLatencies, 99).toFixed(1)),
            unit: "ms",
            ...(level === 5000 ? { note: "aim: under 1000 ms" } : {}),
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
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  return rows;
}

if (import.meta.main) {
  const args = Deno.args;
  if (args[0] === "--watch-worker") {
    await watchWorker(args[1]!, args[2]!, Number(args[3]), Number(args[4]));
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
