/**
 * Cluster manager API throughput, all on loopback against a real
 * `wgcni cluster serve` process (SQLite store, synchronous=FULL):
 *
 * - `GET /v1/peers` (the peer snapshot a node reads) requests per second with
 *   1,000 and 5,000 registered nodes, with a node credential;
 * - `POST /v1/nodes` (a new node registering with the join token) requests
 *   per second;
 *
 * the reads next to a bare `Deno.serve` process answering the identical
 * bytes (the status, headers and body wgcni sent for the same request,
 * captured just before), the registrations next to what the store's engine
 * writes durably on its own: a SQLite file in the same directory, opened as
 * the cluster store opens its file (WAL, synchronous=FULL, exclusive lock),
 * holding as many node rows, one row of a registration's size committed in
 * its own transaction each time. Each is measured in the same run, with the
 * same load for the HTTP pair. The load comes
 * from separate processes (this file run with `--load`) holding keep-alive
 * HTTP/1.1 connections with one request in flight each, speaking raw HTTP so
 * the load side costs little CPU. Run alone: `deno run -A bench/api.ts`.
 *
 * Also exports the load machinery bench/node_ipam.ts uses.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable } from "./_report.ts";
import { join } from "node:path";
import { ClusterClient } from "../lib/api/cluster_client.ts";
import { hashSecret, newSecret } from "../lib/store/cluster_store.ts";
import { openDatabase } from "../lib/store/sqlite_ipam.ts";
import { readTokens, startBenchServer, withFdLimit } from "../tests/unit/_cluster_process.ts";

const LEVELS = [1000, 5000];
const LOAD_PROCESSES = 2;
const CONNECTIONS_PER_PROCESS = 32;
const WARMUP_MS = 1000;
const DURATION_MS = 4000;
const SETUP_IN_FLIGHT = 64;
/** Share of the reference's rate the issue aims for (bare server for reads, the engine for writes). */
const AIM_RATIO = 0.5;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const SELF = new URL(import.meta.url).pathname;

/** Wall-clock milliseconds with sub-millisecond resolution. */
export const now = (): number => performance.timeOrigin + performance.now();

/** Where the load connects: a TCP port on loopback or a unix socket. */
export type Target = { readonly hostname: string; readonly port: number } | {
  readonly path: string;
};

/** One answer as {@linkcode RawHttp} read it. */
export interface RawResponse {
  readonly status: number;
  /** Body bytes (after de-chunking). */
  readonly bytes: number;
  readonly headers: readonly [string, string][];
  /** Only when asked for. */
  readonly body?: Uint8Array<ArrayBuffer>;
}

/**
 * One keep-alive HTTP/1.1 connection with one request in flight: writes the
 * request bytes as given, reads the answer's head and skips (or keeps) its
 * body by Content-Length or chunked framing.
 */
export class RawHttp {
  readonly #conn: Deno.Conn;
  #buf = new Uint8Array(256 * 1024);
  #r = 0;
  #w = 0;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  static async connect(target: Target): Promise<RawHttp> {
    const conn = "path" in target
      ? await Deno.connect({ transport: "unix", path: target.path })
      : await Deno.connect({ hostname: target.hostname, port: target.port });
    return new RawHttp(conn);
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }

  /** Reads more bytes into the buffer (compacting or growing it first when full). */
  async #more(): Promise<void> {
    if (this.#r === this.#w) {
      this.#r = this.#w = 0;
    } else if (this.#w === this.#buf.length) {
      if (this.#r > 0) {
        this.#buf.copyWithin(0, this.#r, this.#w);
        this.#w -= this.#r;
        this.#r = 0;
      } else {
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
    }
    const n = await this.#conn.read(this.#buf.subarray(this.#w));
    if (n === null) throw new Error("the server closed the connection");
    this.#w += n;
  }

  /** Index of the first `\r\n` (or `\r\n\r\n` when `blank`) at or after the read position. */
  #find(blank: boolean): number {
    const b = this.#buf;
    const last = this.#w - (blank ? 4 : 2);
    for (let i = this.#r; i <= last; i++) {
      if (b[i] === 13 && b[i + 1] === 10 && (!blank || (b[i + 2] === 13 && b[i + 3] === 10))) {
        return i;
      }
    }
    return -1;
  }

  async #line(): Promise<string> {
    let end: number;
    while ((end = this.#find(false)) < 0) await this.#more();
    const text = decoder.decode(this.#buf.subarray(this.#r, end));
    this.#r = end + 2;
    return text;
  }

  /** Consumes `n` bytes, keeping them in `parts` when given. */
  async #take(n: number, parts?: Uint8Array[]): Promise<void> {
    while (n > 0) {
      if (this.#r === this.#w) await this.#more();
      const k = Math.min(n, this.#w - this.#r);
      parts?.push(this.#buf.slice(this.#r, this.#r + k));
      this.#r += k;
      n -= k;
    }
  }

  /** Sends one request and reads its whole answer. */
  async request(req: Uint8Array, keepBody = false): Promise<RawResponse> {
    for (let off = 0; off < req.length;) off += await this.#conn.write(req.subarray(off));
    let end: number;
    while ((end = this.#find(true)) < 0) await this.#more();
    const lines = decoder.decode(this.#buf.subarray(this.#r, end)).split("\r\n");
    this.#r = end + 4;
    const status = Number(lines[0]?.split(" ")[1]);
    const headers = lines.slice(1).map((l): [string, string] => {
      const colon = l.indexOf(":");
      return [l.slice(0, colon).trim().toLowerCase(), l.slice(colon + 1).trim()];
    });
    const header = (name: string) => headers.find(([k]) => k === name)?.[1];
    const parts: Uint8Array[] | undefined = keepBody ? [] : undefined;
    let bytes = 0;
    if (status === 204 || status === 304 || (status >= 100 && status < 200)) {
      // no body
    } else if (header("transfer-encoding")?.toLowerCase().includes("chunked")) {
      while (true) {
        const size = parseInt((await this.#line()).split(";")[0]!, 16);
        if (!(size >= 0)) throw new Error("bad chunk size");
        if (size === 0) {
          while ((await this.#line()) !== "");
          break;
        }
        await this.#take(size, parts);
        bytes += size;
        await this.#take(2);
      }
    } else {
      const length = Number(header("content-length"));
      if (!Number.isFinite(length)) throw new Error("an answer without a length");
      await this.#take(length, parts);
      bytes = length;
    }
    const res: RawResponse = { status, bytes, headers };
    if (parts === undefined) return res;
    const body = new Uint8Array(bytes);
    let at = 0;
    for (const p of parts) {
      body.set(p, at);
      at += p.length;
    }
    return { ...res, body };
  }
}

/** The bytes of one HTTP/1.1 request. */
export function httpRequest(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Uint8Array {
  const bodyBytes = body === undefined ? undefined : encoder.encode(body);
  const head = [`${method} ${path} HTTP/1.1`, "host: 127.0.0.1"];
  for (const [k, v] of Object.entries(headers)) head.push(`${k}: ${v}`);
  if (bodyBytes !== undefined) head.push(`content-length: ${bodyBytes.length}`);
  const headBytes = encoder.encode(head.join("\r\n") + "\r\n\r\n");
  if (bodyBytes === undefined) return headBytes;
  const all = new Uint8Array(headBytes.length + bodyBytes.length);
  all.set(headBytes);
  all.set(bodyBytes, headBytes.length);
  return all;
}

/** What one kind of request did inside the measured window. */
export interface LabelStats {
  count: number;
  bytes: number;
  non2xx: number;
  /** Milliseconds per request, unsorted. */
  latencies: number[];
}

/** Records one answered request. */
export type Recorder = (label: string, startedAt: number, res: RawResponse) => void;

/**
 * Worker side of a load process: opens `lanes` connections, reports
 * `{"ready":…}`, waits for a `go` line on stdin, then runs `step` on every
 * lane for `warmupMs + durationMs` and reports, as one JSON line, what
 * finished inside the last `durationMs`.
 */
export async function loadWorker(options: {
  readonly target: Target;
  readonly lanes: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  readonly step: (http: RawHttp, lane: number, seq: number, record: Recorder) => Promise<void>;
}): Promise<void> {
  const report = (o: unknown) => Deno.stdout.writeSync(encoder.encode(JSON.stringify(o) + "\n"));
  const conns = await Promise.all(
    Array.from({ length: options.lanes }, () => RawHttp.connect(options.target)),
  );
  report({ ready: conns.length });
  await waitForGo();
  const start = now();
  const from = start + options.warmupMs;
  const to = from + options.durationMs;
  const stats: Record<string, LabelStats> = {};
  let errors = 0;
  let firstError = "";
  const record: Recorder = (label, startedAt, res) => {
    const t = now();
    if (t < from || t > to) return;
    const s = stats[label] ??= { count: 0, bytes: 0, non2xx: 0, latencies: [] };
    s.count++;
    s.bytes += res.bytes;
    if (res.status < 200 || res.status > 299) s.non2xx++;
    s.latencies.push(t - startedAt);
  };
  const lane = async (i: number) => {
    let http = conns[i]!;
    for (let seq = 0; now() < to; seq++) {
      try {
        await options.step(http, i, seq, record);
      } catch (err) {
        errors++;
        firstError ||= (err as Error).message;
        http.close();
        http = await RawHttp.connect(options.target);
      }
    }
    http.close();
  };
  await Promise.all(conns.map((_, i) => lane(i)));
  report({ stats, errors, firstError });
}

/** Waits for a `go` line on stdin (the start signal of a load or join process). */
export async function waitForGo(): Promise<void> {
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (!buf.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("stdin closed before go");
    buf += value;
  }
  reader.releaseLock();
}

const interruptCleanups = new Set<() => void>();

function onSignal(): void {
  for (const fn of [...interruptCleanups].reverse()) {
    try {
      fn();
    } catch {
      // best effort: the process exits next
    }
  }
  Deno.exit(130);
}

/**
 * Runs `fn` (last registered first) if this process gets SIGINT or SIGTERM
 * before the returned function is called: kills what the benchmark started
 * and removes its temp dirs on that exit path too.
 */
export function onInterrupt(fn: () => void): () => void {
  if (interruptCleanups.size === 0) {
    Deno.addSignalListener("SIGINT", onSignal);
    Deno.addSignalListener("SIGTERM", onSignal);
  }
  interruptCleanups.add(fn);
  return () => {
    if (!interruptCleanups.delete(fn) || interruptCleanups.size > 0) return;
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  };
}

/** Kills a process by its pid, ignoring one already gone. */
export function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** A child `deno run -A ARGS` that reports JSON lines on stdout. */
export class JsonChild {
  readonly pid: number;
  readonly #child: Deno.ChildProcess;
  readonly #reader: ReadableStreamDefaultReader<string>;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  readonly #forget: () => void;
  #buf = "";

  constructor(args: readonly string[], options: { stdin?: boolean; fdLimit?: number } = {}) {
    const argv = [Deno.execPath(), "run", "-A", ...args];
    const [cmd, ...rest] = options.fdLimit === undefined
      ? argv
      : withFdLimit(options.fdLimit, argv);
    this.#child = new Deno.Command(cmd!, {
      args: rest,
      stdout: "piped",
      stderr: "inherit",
      stdin: options.stdin ? "piped" : "null",
    }).spawn();
    this.pid = this.#child.pid;
    const pid = this.pid;
    this.#forget = onInterrupt(() => killPid(pid));
    this.#reader = this.#child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#writer = options.stdin ? this.#child.stdin.getWriter() : undefined;
  }

  /** The next JSON line. */
  async next(): Promise<Record<string, unknown>> {
    let nl: number;
    while ((nl = this.#buf.indexOf("\n")) < 0) {
      const { value, done } = await this.#reader.read();
      if (done) throw new Error("a child process ended early");
      this.#buf += value;
    }
    const line = this.#buf.slice(0, nl);
    this.#buf = this.#buf.slice(nl + 1);
    return JSON.parse(line);
  }

  async send(line: string): Promise<void> {
    await this.#writer?.write(encoder.encode(line + "\n"));
  }

  async stop(): Promise<void> {
    try {
      this.#child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await this.#writer?.close().catch(() => {});
    await this.#reader.cancel().catch(() => {});
    await this.#child.status;
    this.#forget();
  }
}

let clkTck: number | undefined;

/** CPU seconds (user + system) a process used so far, from /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  clkTck ??= Number(
    new TextDecoder().decode(new Deno.Command("getconf", { args: ["CLK_TCK"] }).outputSync().stdout)
      .trim(),
  ) || 100;
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clkTck;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** What {@linkcode driveLoad} measured. */
export interface LoadOutcome {
  /** Per label: requests per second inside the window, and the merged stats. */
  readonly labels: Record<string, LabelStats & { perSecond: number; p50: number; p99: number }>;
  /** CPU seconds of the server over wall seconds, from go to the last report. */
  readonly serverCpuShare: number;
  readonly errors: number;
  readonly firstError: string;
}

/** Starts the load processes, runs them at once against a server and merges their reports. */
export async function driveLoad(
  argvs: readonly (readonly string[])[],
  serverPid: number,
  durationMs: number,
): Promise<LoadOutcome> {
  const workers = argvs.map((a) => new JsonChild(a, { stdin: true, fdLimit: 4096 }));
  try {
    await Promise.all(workers.map((w) => w.next()));
    const c0 = cpuSeconds(serverPid);
    const t0 = now();
    await Promise.all(workers.map((w) => w.send("go")));
    const reports = await Promise.all(workers.map((w) => w.next())) as unknown as {
      stats: Record<string, LabelStats>;
      errors: number;
      firstError: string;
    }[];
    const serverCpuShare = (cpuSeconds(serverPid) - c0) / ((now() - t0) / 1000);
    const labels: LoadOutcome["labels"] = {};
    for (const r of reports) {
      for (const [label, s] of Object.entries(r.stats)) {
        const m = labels[label] ??= {
          count: 0,
          bytes: 0,
          non2xx: 0,
          latencies: [],
          perSecond: 0,
          p50: 0,
          p99: 0,
        };
        m.count += s.count;
        m.bytes += s.bytes;
        m.non2xx += s.non2xx;
        m.latencies.push(...s.latencies);
      }
    }
    for (const m of Object.values(labels)) {
      m.latencies.sort((a, b) => a - b);
      m.perSecond = m.count / (durationMs / 1000);
      m.p50 = percentile(m.latencies, 50);
      m.p99 = percentile(m.latencies, 99);
    }
    return {
      labels,
      serverCpuShare,
      errors: reports.reduce((n, r) => n + r.errors, 0),
      firstError: reports.find((r) => r.firstError)?.firstError ?? "",
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
  }
}

/** "met" or "not met" with the aim it was checked against. */
export function aimNote(met: boolean, aim: string): string {
  return `aim ${aim}: ${met ? "met" : "NOT met"}`;
}

// ---- the cluster API benchmark ----

interface LoadSpec {
  readonly target: Target;
  readonly connections: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** `get`: the same GET each time; `register`: POST /v1/nodes, a new node each time. */
  readonly kind: "get" | "register";
  readonly path: string;
  readonly token: string;
  readonly prefix: string;
}

function randomKey(): string {
  return btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
}

function registerBody(name: string, i: number): string {
  return JSON.stringify({
    name,
    publicKey: randomKey(),
    endpoint: `192.0.2.${(i % 250) + 1}:51820`,
  });
}

function registerRequest(token: string, name: string, i: number): Uint8Array {
  return httpRequest("POST", "/v1/nodes", {
    authorization: `Bearer ${token}`,
    "content-type": "application/json",
  }, registerBody(name, i));
}

async function apiLoadWorker(spec: LoadSpec): Promise<void> {
  const get = httpRequest("GET", spec.path, { authorization: `Bearer ${spec.token}` });
  await loadWorker({
    target: spec.target,
    lanes: spec.connections,
    warmupMs: spec.warmupMs,
    durationMs: spec.durationMs,
    step: async (http, lane, seq, record) => {
      const req = spec.kind === "get"
        ? get
        : registerRequest(spec.token, `${spec.prefix}-${lane}-${seq}`, seq);
      const t0 = now();
      record(spec.kind, t0, await http.request(req));
    },
  });
}

/** A captured answer: what the bare server sends back byte for byte. */
interface Captured {
  readonly status: number;
  readonly headers: [string, string][];
  readonly body: Uint8Array<ArrayBuffer>;
}

/** Headers Deno.serve writes itself (or that describe the connection, not the answer). */
const HOP_HEADERS = new Set(["date", "content-length", "transfer-encoding", "connection"]);

async function capture(target: Target, req: Uint8Array): Promise<Captured> {
  const http = await RawHttp.connect(target);
  try {
    const res = await http.request(req, true);
    return {
      status: res.status,
      headers: res.headers.filter(([k]) => !HOP_HEADERS.has(k)),
      body: res.body!,
    };
  } finally {
    http.close();
  }
}

/** Bare server mode: answers GET with `get.*` and POST (after reading its body) with `post.*`. */
function bareServer(dir: string): void {
  const load = (name: string): Captured | undefined => {
    try {
      const meta = JSON.parse(Deno.readTextFileSync(join(dir, `${name}.json`)));
      return { ...meta, body: Deno.readFileSync(join(dir, `${name}.body`)) };
    } catch {
      return undefined;
    }
  };
  const get = load("get");
  const post = load("post");
  // Sent as text, the form Deno.serve writes fastest (the answers are UTF-8 JSON: same bytes).
  const text = (c: Captured | undefined) => c && { ...c, text: new TextDecoder().decode(c.body) };
  const [getText, postText] = [text(get), text(post)];
  const answer = (c: ReturnType<typeof text>) =>
    c === undefined
      ? new Response("no captured answer\n", { status: 404 })
      : new Response(c.text, { status: c.status, headers: c.headers });
  Deno.addSignalListener("SIGTERM", () => Deno.exit(0));
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => Deno.stdout.writeSync(encoder.encode(JSON.stringify({ port }) + "\n")),
  }, async (req) => {
    if (req.method === "POST") {
      await req.arrayBuffer();
      return answer(postText);
    }
    return answer(getText);
  });
}

async function startBare(dir: string, captured: { get?: Captured; post?: Captured }) {
  await Deno.mkdir(dir, { recursive: true });
  for (const [name, c] of Object.entries(captured)) {
    Deno.writeFileSync(join(dir, `${name}.body`), c.body);
    Deno.writeTextFileSync(
      join(dir, `${name}.json`),
      JSON.stringify({ status: c.status, headers: c.headers }),
    );
  }
  const child = new JsonChild([SELF, "--bare", dir], { fdLimit: 4096 });
  try {
    const { port } = await child.next() as { port: number };
    return { child, target: { hostname: "127.0.0.1", port } as Target };
  } catch (err) {
    await child.stop();
    throw err;
  }
}

function loadArgvs(spec: Omit<LoadSpec, "connections" | "warmupMs" | "durationMs">): string[][] {
  return Array.from({ length: LOAD_PROCESSES }, (_, i) => [
    SELF,
    "--load",
    JSON.stringify(
      {
        ...spec,
        prefix: `${spec.prefix}-p${i}`,
        connections: CONNECTIONS_PER_PROCESS,
        warmupMs: WARMUP_MS,
        durationMs: DURATION_MS,
      } satisfies LoadSpec,
    ),
  ]);
}

/** Registers `count` nodes with `inFlight` requests at a time (setup, not measured). */
async function registerNodes(api: ClusterClient, count: number, prefix: string): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const i = next++;
      await api.register({
        name: `${prefix}-${i}`,
        publicKey: randomKey(),
        endpoint: `192.0.2.${(i % 250) + 1}:51820`,
      });
    }
  };
  await Promise.all(Array.from({ length: SETUP_IN_FLIGHT }, lane));
}

function check(outcome: LoadOutcome, label: string, what: string) {
  const m = outcome.labels[label];
  if (m === undefined || m.count === 0) {
    throw new Error(`${what}: no request finished (${outcome.firstError || "no error reported"})`);
  }
  if (m.non2xx > 0 || outcome.errors > 0) {
    throw new Error(
      `${what}: ${m.non2xx} answers not 2xx, ${outcome.errors} connection errors ${outcome.firstError}`,
    );
  }
  return m;
}

const ms = (n: number) => n.toFixed(n < 10 ? 1 : 0);

/** One node row as a registration stores it (the columns of cluster_nodes). */
function nodeRow(name: string, i: number): (string | number)[] {
  const t = Date.now();
  return [
    name,
    randomKey(),
    `192.0.2.${(i % 250) + 1}:51820`,
    JSON.stringify([
      `10.${i >> 16 & 255}.${i >> 8 & 255}.0/24`,
      `fd00:128:0:${i.toString(16)}::/64`,
    ]),
    hashSecret(newSecret()),
    t,
    t,
  ];
}

/**
 * The engine's own durable write rate: a SQLite file in `dir` opened as the
 * cluster store opens its own, `rows` node rows in it, then for `durationMs`
 * one row committed per transaction (`perCommit` rows per transaction for
 * the ceiling of group commit). Rows per second.
 */
function engineWrites(dir: string, rows: number, perCommit: number, durationMs: number): number {
  const path = join(dir, `engine-${perCommit}.db`);
  const db = openDatabase(path);
  try {
    db.exec("PRAGMA locking_mode = EXCLUSIVE");
    db.exec(`CREATE TABLE nodes (
      name TEXT PRIMARY KEY, public_key TEXT NOT NULL UNIQUE, endpoint TEXT NOT NULL,
      subnets TEXT NOT NULL, credential_hash TEXT NOT NULL UNIQUE,
      registered_at INTEGER NOT NULL, last_seen_at INTEGER NOT NULL) STRICT`);
    const insert = db.prepare("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?)");
    db.exec("BEGIN IMMEDIATE");
    for (let i = 0; i < rows; i++) insert.run(...nodeRow(`pre-${i}`, i));
    db.exec("COMMIT");
    let n = 0;
    const t0 = now();
    while (now() - t0 < durationMs) {
      db.exec("BEGIN IMMEDIATE");
      for (let k = 0; k < perCommit; k++, n++) insert.run(...nodeRow(`w-${n}`, rows + n));
      db.exec("COMMIT");
    }
    return n / ((now() - t0) / 1000);
  } finally {
    db.close();
    // SQLite removes its WAL and shared-memory files on close.
    Deno.removeSync(path);
  }
}

/** Runs the benchmark and returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const inFlight = LOAD_PROCESSES * CONNECTIONS_PER_PROCESS;
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-bench-api-" });
  const forgetDir = onInterrupt(() => Deno.removeSync(dir, { recursive: true }));
  const bares: JsonChild[] = [];
  let forgetServer = () => {};
  try {
    // Every simulated node connects from loopback, many with one credential.
    await using server = await startBenchServer(join(dir, "data"), {
      podCidr: "10.0.0.0/8,fd00:128::/48",
      fds: 4096,
    });
    forgetServer = onInterrupt(() => killPid(server.pid));
    const url = new URL(server.url);
    const target: Target = { hostname: url.hostname, port: Number(url.port) };
    const tokens = readTokens(join(dir, "data"));
    const joiner = new ClusterClient(server.url, { token: tokens.join });
    // The snapshot is read with a node credential, as nodes read it.
    const reader = await joiner.register({
      name: "reader",
      publicKey: randomKey(),
      endpoint: "192.0.2.1:51820",
    });
    let registered = 1;
    for (const level of LEVELS) {
      await registerNodes(joiner, level - registered, `n${level}`);
      registered = level;
      const getReq = httpRequest("GET", "/v1/peers", {
        authorization: `Bearer ${reader.credential}`,
      });
      const snap = await capture(target, getReq);
      const peers = (JSON.parse(decoder.decode(snap.body)) as { peers: unknown[] }).peers.length;
      if (snap.status !== 200 || peers !== level) {
        throw new Error(`the snapshot has ${peers} peers (status ${snap.status}), not ${level}`);
      }
      const spec = {
        kind: "get" as const,
        path: "/v1/peers",
        token: reader.credential,
        prefix: "get",
      };
      const wgOut = await driveLoad(loadArgvs({ ...spec, target }), server.pid, DURATION_MS);
      const wg = check(wgOut, "get", "wgcni GET /v1/peers");
      const bare = await startBare(join(dir, `bare-${level}`), { get: snap });
      bares.push(bare.child);
      const bareOut = await driveLoad(
        loadArgvs({ ...spec, target: bare.target }),
        bare.child.pid,
        DURATION_MS,
      );
      const ref = check(bareOut, "get", "bare GET");
      await bare.child.stop();
      if (ref.bytes / ref.count !== snap.body.length || wg.bytes / wg.count !== snap.body.length) {
        throw new Error("the bare server and wgcni did not answer the same body size");
      }
      rows.push({
        bench: "api",
        name: `GET /v1/peers, ${level} nodes (${
          (snap.body.length / 1024).toFixed(0)
        } KiB body), ${inFlight} connections`,
        value: Math.round(wg.perSecond),
        unit: "req/s",
        reference: "bare Deno.serve, same bytes",
        referenceValue: Math.round(ref.perSecond),
        note: `${aimNote(wg.perSecond >= AIM_RATIO * ref.perSecond, "≥ 50% of bare")}; p50 ${
          ms(wg.p50)
        } / p99 ${ms(wg.p99)} ms (bare ${ms(ref.p50)} / ${ms(ref.p99)}); server CPU ${
          (wgOut.serverCpuShare * 100).toFixed(0)
        }% (bare ${(bareOut.serverCpuShare * 100).toFixed(0)}%)`,
      });
    }

    // Registrations: each request a new node with a new key (one durable commit each).
    const regSample = await capture(target, registerRequest(tokens.join, "sample", 0));
    if (regSample.status !== 201) throw new Error(`registration answered ${regSample.status}`);
    const before = (await joiner.withToken(tokens.admin).peers()).peers.length;
    const regSpec = { kind: "register" as const, path: "/v1/nodes", token: tokens.join };
    const wgOut = await driveLoad(
      loadArgvs({ ...regSpec, target, prefix: "load" }),
      server.pid,
      DURATION_MS,
    );
    const wg = check(wgOut, "register", "wgcni POST /v1/nodes");
    const after = (await joiner.withToken(tokens.admin).peers()).peers.length;
    // The engine alone, on the same disk with as many rows, while the server idles.
    const engine = engineWrites(dir, before, 1, DURATION_MS);
    const ceiling = engineWrites(dir, before, inFlight, DURATION_MS);
    rows.push({
      bench: "api",
      name: `POST /v1/nodes (new node each, ${before}→${after} nodes), ${inFlight} connections`,
      value: Math.round(wg.perSecond),
      unit: "req/s",
      reference: "SQLite alone, same pragmas: one node row per committed transaction",
      referenceValue: Math.round(engine),
      note: `${aimNote(wg.perSecond >= AIM_RATIO * engine, "≥ 50% of the engine")}; p50 ${
        ms(wg.p50)
      } / p99 ${ms(wg.p99)} ms; server CPU ${(wgOut.serverCpuShare * 100).toFixed(0)}%, ${
        (wgOut.serverCpuShare * 1000 / wg.perSecond).toFixed(2)
      } ms per registration; each answer waits for its durable commit, shared by the registrations of one event-loop turn; the engine commits ${
        Math.round(ceiling)
      } rows/s when ${inFlight} (every request in flight) share each commit, the ceiling of group commit`,
    });
    await server.stop("SIGTERM");
  } finally {
    forgetServer();
    await Promise.all(bares.map((b) => b.stop()));
    Deno.removeSync(dir, { recursive: true });
    forgetDir();
  }
  return rows;
}

if (import.meta.main) {
  const args = Deno.args;
  if (args[0] === "--load") {
    await apiLoadWorker(JSON.parse(args[1]!) as LoadSpec);
    Deno.exit(0);
  } else if (args[0] === "--bare") {
    bareServer(args[1]!);
  } else {
    Deno.stdout.writeSync(encoder.encode(markdownTable(await run()) + "\n"));
  }
}
