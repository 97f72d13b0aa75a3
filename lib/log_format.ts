/**
 * How a log line looks, for the daemons (through lib/log.ts) and for the
 * plugin (which imports nothing else on its start-up path): `text`, one
 * readable line with the fields the message does not already show, or
 * `json`, one object per line. Under systemd (JOURNAL_STREAM set) text lines
 * carry no time of their own: the journal stamps them.
 */

export type LogFormat = "text" | "json";

/** Log levels, lowest first (as LogTape names them). */
export type Level = "trace" | "debug" | "info" | "warning" | "error" | "fatal";

const LEVELS: readonly Level[] = ["trace", "debug", "info", "warning", "error", "fatal"];

/** Parses a level name as written in WGCNI_LOG_LEVEL (also accepts `warn`). */
export function parseLevel(value: string | undefined, fallback: Level = "info"): Level {
  if (value === undefined || value === "") return fallback;
  const v = value.toLowerCase() === "warn" ? "warning" : value.toLowerCase();
  if ((LEVELS as readonly string[]).includes(v)) return v as Level;
  throw new RangeError(
    `Cannot use log level "${value}": expected one of ${LEVELS.join(", ")}`,
  );
}

/** One record, already rendered to a message and its fields. */
export interface LogLine {
  readonly time: number;
  readonly level: string;
  readonly category: string;
  readonly message: string;
  /** The record's fields (for text, those the message does not already show). */
  readonly fields: Readonly<Record<string, unknown>>;
}

/** Parses a format name as `--log-format` and WGCNI_LOG_FORMAT take it. */
export function parseLogFormat(value: string | undefined): LogFormat {
  if (value === undefined || value === "" || value === "text") return "text";
  if (value === "json") return "json";
  throw new RangeError(`Cannot use log format "${value}": expected text or json`);
}

/** A value as text fields show it: strings bare unless they need quotes, errors by message. */
function show(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (value instanceof Error) return JSON.stringify(value.message);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** A value as JSON carries it (errors by message: a stack is noise in a log line). */
function plain(value: unknown): unknown {
  return value instanceof Error ? value.message : value;
}

/** Renders one line, ending with a newline. */
export function formatLine(
  line: LogLine,
  format: LogFormat,
  options: { journal?: boolean } = {},
): string {
  if (format === "json") {
    const fields = Object.fromEntries(
      Object.entries(line.fields).map(([k, v]) => [k, plain(v)]),
    );
    let text: string;
    try {
      text = JSON.stringify({
        time: new Date(line.time).toISOString(),
        level: line.level,
        logger: line.category,
        msg: line.message,
        ...fields,
      });
    } catch {
      text = JSON.stringify({ time: new Date(line.time).toISOString(), msg: line.message });
    }
    return text + "\n";
  }
  const props = Object.entries(line.fields).map(([k, v]) => `${k}=${show(v)}`).join(" ");
  const head = `${line.level.toUpperCase()} ${line.category}: ${line.message}`;
  const stamped = options.journal ? head : `${new Date(line.time).toISOString()} ${head}`;
  return props ? `${stamped} ${props}\n` : `${stamped}\n`;
}

/** True under systemd, whose journal stamps every line itself. */
export function underJournal(env: (name: string) => string | undefined): boolean {
  return (env("JOURNAL_STREAM") ?? "") !== "";
}

/** Renders a value inside a message as the text format shows fields. */
export function showInMessage(value: unknown): string {
  return typeof value === "string" ? value : show(value);
}
