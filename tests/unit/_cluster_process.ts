/**
 * `wgcni cluster serve` as a real process on a loopback port, for tests and
 * the cluster benchmark: start it, learn its URL from its log, read its
 * generated tokens, stop it (SIGTERM) or kill it (SIGKILL).
 */
import { join } from "node:path";

export const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

/** A running cluster manager. */
export interface ServerProcess extends AsyncDisposable {
  readonly url: string;
  readonly dataDir: string;
  readonly pid: number;
  /** Everything it wrote so far. */
  stdout(): string;
  stderr(): string;
  /** Sends a signal and waits for the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/**
 * Bounds for benchmarks, whose thousands of simulated nodes all connect from
 * loopback and share credentials.
 */
export const BENCH_BOUNDS = [
  "--max-connections-per-source",
  "100000",
  "--max-watches-per-credential",
  "100000",
] as const;

/**
 * A cluster manager for a benchmark: on a loopback port, a pod pool large
 * enough for its nodes, keep-alives out of the way, {@linkcode BENCH_BOUNDS},
 * room for `fds` descriptors and info logs.
 */
export function startBenchServer(
  dataDir: string,
  o: { podCidr?: string; fds: number; args?: readonly string[] },
): Promise<ServerProcess> {
  return startServer(dataDir, [
    "--listen",
    "127.0.0.1:0",
    "--pod-cidr",
    o.podCidr ?? "10.128.0.0/10,fd00:128::/48",
    "--keepalive",
    "1h",
    ...BENCH_BOUNDS,
    ...(o.args ?? []),
  ], { fdLimit: o.fds, env: { WGCNI_LOG_LEVEL: "info" } });
}

/** The plain tokens the server generated on its first start. */
export function readTokens(dataDir: string): { admin: string; join: string } {
  return {
    admin: Deno.readTextFileSync(join(dataDir, "admin-token")).trim(),
    join: Deno.readTextFileSync(join(dataDir, "join-token")).trim(),
  };
}

/**
 * Wraps a command line so it runs with at least `n` open files allowed (up to
 * the hard limit); `exec` keeps the pid, so signals reach the command itself.
 */
export function withFdLimit(n: number, argv: readonly string[]): string[] {
  return [
    "sh",
    "-c",
    `ulimit -n ${n} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`,
    "sh",
    ...argv,
  ];
}

/** Runs `wgcni ARGS` to its end. */
export async function runWgcni(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Starts `wgcni cluster serve --listen 127.0.0.1:0 --data-dir DIR ARGS` and
 * resolves once it logs its URL; rejects with its output when it exits first.
 */
export async function startServer(
  dataDir: string,
  args: readonly string[],
  options: { env?: Record<string, string>; timeoutMs?: number; fdLimit?: number } = {},
): Promise<ServerProcess> {
  const argv = [
    Deno.execPath(),
    "run",
    "-A",
    MAIN,
    "cluster",
    "serve",
    "--data-dir",
    dataDir,
    ...args,
  ];
  const [cmd, ...rest] = options.fdLimit === undefined ? argv : withFdLimit(options.fdLimit, argv);
  const child = new Deno.Command(cmd!, {
    args: rest,
    env: { NO_COLOR: "1", WGCNI_LOG_LEVEL: "info", ...options.env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  let out = "";
  let err = "";
  const listening = Promise.withResolvers<string>();
  const drain = async (stream: ReadableStream<Uint8Array>, onText: (t: string) => void) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) onText(text);
  };
  const drained = Promise.all([
    drain(child.stdout, (t) => out += t),
    drain(child.stderr, (t) => {
      err += t;
      const m = err.match(/Listening on (\S+)/);
      if (m !== null) listening.resolve(m[1]!);
    }),
  ]);
  const status = child.status;
  status.then((s) =>
    listening.reject(
      new Error(`wgcni cluster serve exited with ${s.code} before listening:\n${err}`),
    )
  );
  const timer = setTimeout(
    () => listening.reject(new Error(`wgcni cluster serve did not listen in time:\n${err}`)),
    options.timeoutMs ?? 20_000,
  );
  let url: string;
  try {
    url = await listening.promise;
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await status;
    await drained;
    throw e;
  } finally {
    clearTimeout(timer);
  }
  let exited: number | undefined;
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    if (exited === undefined) {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
      exited = (await status).code;
      await drained;
    }
    return exited;
  };
  return {
    url,
    dataDir,
    pid: child.pid,
    stdout: () => out,
    stderr: () => err,
    stop,
    [Symbol.asyncDispose]: async () => {
      await stop("SIGKILL");
    },
  };
}

/** Runs `wgcni cluster serve` expecting it to refuse to start; returns its exit code and stderr. */
export async function serveRefusal(
  dataDir: string,
  args: readonly string[],
): Promise<{ code: number; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "cluster", "serve", "--data-dir", dataDir, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const out = await child.output();
  clearTimeout(timer);
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}
