/**
 * Option sources for every command: a flag beats its `WGCNI_…` variable,
 * which beats the YAML file named by `--config`, which beats the default.
 */
import { type Command, InvalidArgumentError, Option } from "@commander-js/extra-typings";
import { parse as parseYaml } from "yaml";
import { parseLevel, parseLogFormat } from "../lib/log_format.ts";

/** The WGCNI_ variable for a flag: `--pod-cidr` → `WGCNI_POD_CIDR`. */
export function envName(flag: string): string {
  return "WGCNI_" + flag.replace(/^-+/, "").replace(/-/g, "_").toUpperCase();
}

/**
 * An option whose value may also come from its WGCNI_ variable (named after
 * the flag unless `env` names it: one variable keeps one meaning everywhere).
 */
export function opt<Usage extends string>(flags: Usage, description: string, env?: string) {
  const long = flags.match(/--([a-z0-9-]+)/)?.[1];
  if (long === undefined) throw new TypeError(`Option ${flags} has no long name`);
  return new Option(flags, description).env(env ?? envName(long));
}

/**
 * Adds the logging flags of a daemon: `--log-level` (WGCNI_LOG_LEVEL) and
 * `--log-format text|json` (WGCNI_LOG_FORMAT).
 */
// deno-lint-ignore no-explicit-any
export function withLogFlags<C extends Command<any, any, any>>(cmd: C): C {
  cmd.addOption(
    opt("--log-level <level>", "trace, debug, info, warning, error or fatal").argParser(
      (v: string) => {
        try {
          return parseLevel(v);
        } catch (err) {
          throw new InvalidArgumentError((err as Error).message);
        }
      },
    ).default("info"),
  );
  cmd.addOption(
    opt("--log-format <format>", "text (one line a record) or json (one object a line)")
      .argParser((v: string) => {
        try {
          return parseLogFormat(v);
        } catch (err) {
          throw new InvalidArgumentError((err as Error).message);
        }
      }).default("text"),
  );
  return cmd;
}

/** The logging settings a daemon's flags gave (see {@linkcode withLogFlags}). */
export function logOptions(o: object) {
  const v = o as { logLevel?: unknown; logFormat?: unknown };
  return {
    level: parseLevel(String(v.logLevel ?? "info")),
    format: parseLogFormat(String(v.logFormat ?? "text")),
  };
}

/** Splits repeated or comma-separated values: `--pod-cidr a,b --pod-cidr c`. */
export function collect(value: string, previous: string[] | undefined): string[] {
  const parts = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  return [...(previous ?? []), ...parts];
}

/** Parses a whole number flag within bounds (commander names the flag in its message). */
export function intArg(_name: string, min: number, max: number): (value: string) => number {
  return (value: string) => {
    if (!/^\d+$/.test(value)) {
      throw new InvalidArgumentError(`expected a whole number, got "${value}"`);
    }
    const n = Number(value);
    if (n < min || n > max) {
      throw new InvalidArgumentError(`expected ${min} to ${max}, got ${n}`);
    }
    return n;
  };
}

/** Adds `--config FILE` and, before the action runs, fills unset options from that YAML file. */
// deno-lint-ignore no-explicit-any
export function withConfigFile<C extends Command<any, any, any>>(cmd: C): C {
  cmd.addOption(opt("--config <file>", "YAML file with option values (keys as flag names)"));
  cmd.hook("preAction", (_this, action) => {
    const file = action.getOptionValue("config") as string | undefined;
    if (file === undefined) return;
    let doc: unknown;
    try {
      doc = parseYaml(Deno.readTextFileSync(file));
    } catch (err) {
      throw new TypeError(`Cannot read config file ${file}: ${(err as Error).message}`);
    }
    if (doc === null || doc === undefined) return;
    if (typeof doc !== "object" || Array.isArray(doc)) {
      throw new TypeError(`Cannot use config file ${file}: expected a mapping of option names`);
    }
    const known = new Map(action.options.map((o) => [o.attributeName(), o] as const));
    for (const [rawKey, value] of Object.entries(doc as Record<string, unknown>)) {
      const key = rawKey.replace(/-([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
      const option = known.get(key);
      if (option === undefined || key === "config") {
        throw new TypeError(`Cannot use config file ${file}: unknown option "${rawKey}"`);
      }
      const source = action.getOptionValueSource(key);
      if (source === "cli" || source === "env") continue;
      let parsed: unknown;
      try {
        parsed = parseValue(option as unknown as OptionInternals, value);
      } catch (err) {
        throw new TypeError(`Cannot use config file ${file}: ${rawKey}: ${(err as Error).message}`);
      }
      action.setOptionValueWithSource(key, parsed, "config");
    }
  });
  return cmd;
}

/** The parts of commander's Option the checks below read. */
interface OptionInternals {
  readonly long?: string;
  readonly envVar?: string;
  readonly variadic: boolean;
  readonly defaultValue?: unknown;
  readonly parseArg?: (value: string, previous: unknown) => unknown;
  isBoolean(): boolean;
  attributeName(): string;
}

/** A strict boolean: true/false (or 1/0); anything else is refused, naming the value. */
export function parseBoolean(text: string): boolean {
  const t = text.trim().toLowerCase();
  if (t === "true" || t === "1") return true;
  if (t === "false" || t === "0") return false;
  throw new InvalidArgumentError(`expected true or false, got "${text}"`);
}

/**
 * A value from a YAML file, checked by the same parser the flag's value
 * goes through: a boolean flag takes a YAML boolean; a list only where the
 * flag may be repeated.
 */
function parseValue(option: OptionInternals, value: unknown): unknown {
  if (option.isBoolean()) {
    if (typeof value === "boolean") return value;
    throw new InvalidArgumentError(`expected true or false, got ${JSON.stringify(value)}`);
  }
  const items = Array.isArray(value) ? value : [value];
  // A flag may be repeated when it is variadic or its parser adds to what came before.
  const repeatable = option.variadic || (option.parseArg?.length ?? 0) >= 2;
  if (Array.isArray(value) && !repeatable) {
    throw new InvalidArgumentError("expected one value, not a list");
  }
  let out: unknown = undefined;
  for (const item of items) {
    if (item === null || typeof item === "object") {
      throw new InvalidArgumentError(`expected a value, got ${JSON.stringify(item)}`);
    }
    const text = String(item);
    out = option.parseArg !== undefined
      ? option.parseArg(text, out)
      : option.variadic
      ? [...((out as string[] | undefined) ?? []), text]
      : text;
  }
  return out;
}

/**
 * Boolean flags set from their WGCNI_ variable: commander takes any value as
 * true (`WGCNI_INSECURE=false` would turn insecure mode on); here only
 * true/false (or 1/0) count, anything else is an error naming the variable.
 */
// deno-lint-ignore no-explicit-any
export function checkEnvBooleans(action: Command<any, any, any>): void {
  for (const o of action.options as unknown as OptionInternals[]) {
    const key = o.attributeName();
    if (!o.isBoolean() || o.envVar === undefined) continue;
    if (action.getOptionValueSource(key) !== "env") continue;
    const text = Deno.env.get(o.envVar) ?? "";
    let value: boolean;
    try {
      value = parseBoolean(text);
    } catch (err) {
      throw new TypeError(`Cannot use ${o.envVar}: ${(err as Error).message}`);
    }
    action.setOptionValueWithSource(key, value ? true : undefined, "env");
  }
}
