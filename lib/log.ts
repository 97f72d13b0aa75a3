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
import {
  formatLine,
  type LogFormat,
  parseLevel,
  parseLogFormat,
  showInMessage,
  underJournal,
} from "./log_format.ts";

export { parseLevel };

export type { Logger };
export type { LogFormat };

/**
 * Renders one record in `format`: its message with the values filled in,
 * and (in text) only the properties the message does not already show.
 */
export function formatRecord(
  record: LogRecord,
  format: LogFormat = "text",
  options: { journal?: boolean } = {},
): string {
  const message = record.message.map((part) =>
    typeof part === "string" ? part : showInMessage(part)
  )
    .join("");
  const template = typeof record.rawMessage === "string" ? record.rawMessage : "";
  const shown = new Set([...template.matchAll(/\{([A-Za-z0-9_]+)\}/g)].map((m) => m[1]));
  // Text leaves out what the message shows; JSON keeps every field for queries.
  const fields = format === "json" ? record.properties : Object.fromEntries(
    Object.entries(record.properties).filter(([k]) => !shown.has(k)),
  );
  return formatLine(
    {
      time: record.timestamp,
      level: record.level,
      category: record.category.join("."),
      message,
      fields,
    },
    format,
    options,
  );
}

const encoder = new TextEncoder();
let configured = false;

/**
 * Sets up logging once per process: records at or above the level go to
 * stderr, or appended to `file` when given (the CNI plugin may name one).
 */
export async function setupLogging(
  options: { level?: LogLevel; file?: string; format?: LogFormat } = {},
): Promise<void> {
  const level = options.level ?? parseLevel(Deno.env.get("WGCNI_LOG_LEVEL"));
  const format = options.format ?? parseLogFormat(Deno.env.get("WGCNI_LOG_FORMAT"));
  const journal = underJournal((n) => Deno.env.get(n));
  const file = options.file;
  const render = (record: LogRecord) => formatRecord(record, format, { journal });
  const sink = file === undefined
    ? (record: LogRecord) => {
      Deno.stderr.writeSync(encoder.encode(render(record)));
    }
    : (record: LogRecord) => {
      Deno.writeTextFileSync(file, render(record), { append: true, mode: 0o600 });
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
