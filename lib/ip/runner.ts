/**
 * The one boundary where wgcni executes programs (`ip`, `nft`, `wg`,
 * `wireguard-go`, `nsenter`, `sysctl`). Everything else asks a
 * {@linkcode Runner}, so unit tests can swap in {@linkcode RecordingRunner}
 * and assert on the command lines that would run.
 */

/** How to run one command. */
export interface RunOptions {
  /** Text written to the command's stdin (e.g. `ip -batch -`, `nft -f -`, `wg set … private-key /dev/stdin`). */
  readonly stdin?: string;
  /** Run inside this network namespace: a path (`/proc/123/ns/net`, `/run/netns/x`) or a name under /run/netns. */
  readonly netns?: string;
  /** Extra environment for the command. */
  readonly env?: Readonly<Record<string, string>>;
}

/** What a finished command left behind. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A command exited non-zero (or could not start). */
export class CommandError extends Error {
  override name = "CommandError";
  readonly argv: readonly string[];
  readonly code: number;
  readonly stderr: string;
  constructor(argv: readonly string[], code: number, stderr: string) {
    super(`Command failed (exit ${code}): ${argv.join(" ")}: ${stderr.trim() || "no output"}`);
    this.argv = argv;
    this.code = code;
    this.stderr = stderr;
  }
}

/** Executes commands. */
export interface Runner {
  /** Runs a command and returns its stdout; throws {@linkcode CommandError} on a non-zero exit. */
  run(argv: readonly string[], options?: RunOptions): Promise<string>;
  /** Runs a command and returns its outcome whatever the exit code. */
  exec(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
}

/** The full argv after wrapping it for a namespace, as it will be executed. */
export function wrapArgv(argv: readonly string[], options: RunOptions = {}): string[] {
  if (argv.length === 0) throw new TypeError("Cannot run an empty command");
  if (options.netns === undefined) return [...argv];
  return ["nsenter", `--net=${netnsPath(options.netns)}`, "--", ...argv];
}

/** Resolves a namespace name to its path under /run/netns; paths pass unchanged. */
export function netnsPath(netns: string): string {
  if (netns.includes("/")) return netns;
  if (!/^[A-Za-z0-9_.-]+$/.test(netns) || netns === "." || netns === "..") {
    throw new TypeError(`Cannot use network namespace name "${netns}"`);
  }
  return `/run/netns/${netns}`;
}

const decoder = new TextDecoder();

/** Runs real processes with Deno.Command. */
export class SystemRunner implements Runner {
  async exec(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    const full = wrapArgv(argv, options);
    const [cmd, ...args] = full as [string, ...string[]];
    const command = new Deno.Command(cmd, {
      args,
      stdin: options.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      // Messages in English whatever the locale: callers tell failures by their text.
      env: { LC_ALL: "C", ...options.env },
    });
    let child: Deno.ChildProcess;
    try {
      child = command.spawn();
    } catch (err) {
      const why = err instanceof Deno.errors.NotFound ? "program not found" : String(err);
      return { code: 127, stdout: "", stderr: `${cmd}: ${why}` };
    }
    if (options.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(new TextEncoder().encode(options.stdin));
        await writer.close();
      } catch {
        // The command closed stdin early; its exit status tells what happened.
      }
    }
    const out = await child.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<string> {
    const result = await this.exec(argv, options);
    if (result.code !== 0) {
      throw new CommandError(wrapArgv(argv, options), result.code, result.stderr);
    }
    return result.stdout;
  }
}

/** One command a {@linkcode RecordingRunner} saw. */
export interface RecordedCommand {
  readonly argv: readonly string[];
  readonly options: RunOptions;
}

/** Decides what a recorded command returns; `undefined` means success with empty output. */
export type Responder = (
  argv: readonly string[],
  options: RunOptions,
) => Partial<RunResult> | undefined | Promise<Partial<RunResult> | undefined>;

/** A fake runner for unit tests: records every command and answers from a responder. */
export class RecordingRunner implements Runner {
  readonly commands: RecordedCommand[] = [];
  #respond: Responder;

  constructor(respond: Responder = () => undefined) {
    this.#respond = respond;
  }

  /** The recorded command lines joined with spaces, namespace wrapping included. */
  get lines(): string[] {
    return this.commands.map((c) => wrapArgv(c.argv, c.options).join(" "));
  }

  async exec(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    this.commands.push({ argv: [...argv], options });
    const r = (await this.#respond(argv, options)) ?? {};
    return { code: r.code ?? 0, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
  }

  async run(argv: readonly string[], options: RunOptions = {}): Promise<string> {
    const result = await this.exec(argv, options);
    if (result.code !== 0) {
      throw new CommandError(wrapArgv(argv, options), result.code, result.stderr);
    }
    return result.stdout;
  }
}
