/**
 * The one logger of wgcni: structured records to stderr (stdout belongs to
 * CNI results and command output), level from WGCNI_LOG_LEVEL. Libraries take
 * a {@linkcode Logger} as a parameter and never call `console`.
 */
import {
  configure,
  getLogger as logtapeLogger,
  type Logger,
  type LogLevel,
  type LogRecord,
  reset,
} from "@logtape/logtape";

export type { Logger };

const LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warning", "error", "fatal"];

/** Parses a level name as written in WGCNI_LOG_LEVEL (also accepts `warn`). */
export function parseLevel(value: string | undefined, fallback: LogLevel = "info"): LogLevel {
  if (value === undefined || value === "") return fallback;
  const v = value.toLowerCase() === "warn" ? "warning" : value.toLowerCase();
  if ((LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new RangeError(
    `Cannot use log level "${value}": expected one of ${LEVELS.join(", ")}`,
  );
}

/** Renders one record as a single line: time, level, category, message, then key=value properties. */
export function formatRecord(record: LogRecord): string {
  const msg = record.message.map((part) => typeof part === "string" ? part : show(part)).join("");
  const props = Object.entries(record.properties)
    .map(([k, v]) => `${k}=${show(v)}`)
    .join(" ");
  const time = new Date(record.timestamp).toISOString();
  const line = `${time} ${record.level.toUpperCase()} ${record.category.join(".")}: ${msg}`;
  return props ? `${line} ${props}\n` : `${line}\n`;
}

function show(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (value instanceof Error) return JSON.stringify(value.message);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

const encoder = new TextEncoder();
let configured = false;

/**
 * Sets up logging once per process: records at or above the level go to
 * stderr, or appended to `file` when given (the CNI plugin may name one).
 */
export async function setupLogging(
  options: { level?: LogLevel; file?: string } = {},
): Promise<void> {
  const level = options.level ?? parseLevel(Deno.env.get("WGCNI_LOG_LEVEL"));
  const file = options.file;
  const sink = file === undefined
    ? (record: LogRecord) => {
      Deno.stderr.writeSync(encoder.encode(formatRecord(record)));
    }
    : (record: LogRecord) => {
      Deno.writeTextFileSync(file, formatRecord(record), { append: true, mode: 0o600 });
    };
  if (configured) await reset();
  await configure({
    sinks: { out: sink },
    loggers: [
      { category: ["wgcni"], lowestLevel: level, sinks: ["out"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["out"] },
    ],
    reset: true,
  });
  configured = true;
}

/** A logger for one part of wgcni, e.g. `getLogger("node", "watch")`. */
export function getLogger(...category: string[]): Logger {
  return logtapeLogger(["wgcni", ...category]);
}
