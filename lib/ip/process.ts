/**
 * Long-running processes (cluster and node managers of `wgcni demo`), the
 * companion of {@linkcode Runner} for commands that do not finish.
 */
import { netnsPath, wrapArgv } from "./runner.ts";

/** A started process. */
export interface Started {
  readonly pid: number;
  /** Resolves with the exit code when the process ends. */
  readonly exited: Promise<number>;
  /** Sends a signal to this process (by pid); no-op when it has ended. */
  kill(signal?: Deno.Signal): void;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has ended. */
  stop(graceMs?: number): Promise<number>;
}

/** Starts `argv` in the background, optionally in a network namespace, output appended to `logFile`. */
export async function startProcess(
  argv: readonly string[],
  options: {
    readonly netns?: string;
    readonly logFile?: string;
    readonly env?: Readonly<Record<string, string>>;
  } = {},
): Promise<Started> {
  // `ip netns exec` would remount /sys; nsenter only switches the network namespace.
  const full = options.netns === undefined
    ? wrapArgv(argv)
    : ["nsenter", `--net=${netnsPath(options.netns)}`, "--", ...argv];
  const [cmd, ...args] = full as [string, ...string[]];
  let log: Deno.FsFile | undefined;
  if (options.logFile !== undefined) {
    log = await Deno.open(options.logFile, { create: true, append: true, mode: 0o600 });
  }
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: log ? "piped" : "null",
    stderr: log ? "piped" : "null",
    ...(options.env ? { env: { ...options.env } } : {}),
  }).spawn();
  // The log is complete when `exited` resolves.
  let pumped: Promise<unknown> = Promise.resolve();
  if (log) {
    const file = log;
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream) await file.write(chunk);
    };
    pumped = Promise.all([pump(child.stdout), pump(child.stderr)]).catch(() => {}).finally(() =>
      file.close()
    );
  }
  let done = false;
  const exited = child.status.then(async (s) => {
    done = true;
    await pumped;
    return s.code;
  });
  const kill = (signal: Deno.Signal = "SIGTERM") => {
    if (done) return;
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
  };
  return {
    pid: child.pid,
    exited,
    kill,
    async stop(graceMs = 3000) {
      kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), graceMs));
      const first = await Promise.race([exited, late]);
      clearTimeout(timer);
      if (first === "late") kill("SIGKILL");
      return await exited;
    },
  };
}
