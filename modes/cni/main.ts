/**
 * The CNI plugin (CNI_COMMAND set): parse and check the environment and the
 * network config, forward to the node manager's socket, print the result in
 * the requested version or a coded error. Lean imports only: this path runs
 * for every pod.
 */
import { CNI_VERSIONS } from "../../lib/version.ts";
import { formatLine, type LogFormat, parseLogFormat, underJournal } from "../../lib/log_format.ts";
import { CniError, ERR } from "../../lib/cni/errors.ts";
import {
  COMMAND_SINCE,
  compareVersions,
  convertResult,
  isSupported,
} from "../../lib/cni/version.ts";
import { parseResult } from "../../lib/cni/result.ts";
import {
  containerIdProblem,
  ifnameProblem,
  netnsPathProblem,
  quoteValue,
} from "../../lib/cni/validate.ts";
import {
  type AddResponse,
  type CniErrorBody,
  type CniRequest,
  type GcResponse,
  LOCAL_PATHS,
} from "../../lib/api/local_types.ts";
import { type ByteReader, postUnix, readUntil, type UnixAnswer } from "./unix_http.ts";

/** Largest network config read from stdin. */
export const MAX_STDIN = 4 * 1024 * 1024;
const LATEST = CNI_VERSIONS[CNI_VERSIONS.length - 1] as string;
const DEFAULT_SOCKET = "/run/wgcni/wgcni.sock";
const KNOWN_ARGS = new Set([
  "IgnoreUnknown",
  "K8S_POD_NAMESPACE",
  "K8S_POD_NAME",
  "K8S_POD_INFRA_CONTAINER_ID",
  "K8S_POD_UID",
]);

/** What the node manager answered: status and JSON body, or unreachable. */
export type NodeReply = { status: number; body: unknown } | { unreachable: string };

/** Sends one request to the node manager. */
export type NodeCall = (
  socket: string,
  path: string,
  body: CniRequest,
  timeoutMs: number,
) => Promise<NodeReply>;

/** The plugin's surroundings, injectable for tests. */
export interface PluginIo {
  readonly env: (name: string) => string | undefined;
  /** Read as `Deno.stdin.read` does; a web stream here costs ~9 ms of start-up per pod. */
  readonly stdin: ByteReader;
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly call: NodeCall;
  readonly netnsExists: (path: string) => boolean;
}

const enc = new TextEncoder();

/** The real surroundings: process env, stdin, stdout, stderr and the unix socket. */
export function systemIo(): PluginIo {
  return {
    env: (n) => Deno.env.get(n),
    stdin: Deno.stdin,
    stdout: (t) => Deno.stdout.writeSync(enc.encode(t)),
    stderr: (t) => Deno.stderr.writeSync(enc.encode(t)),
    call: callNode,
    netnsExists: (p) => {
      try {
        Deno.statSync(p);
        return true;
      } catch {
        return false;
      }
    },
  };
}

/** POSTs to the node manager over its unix socket. */
export async function callNode(
  socket: string,
  path: string,
  body: CniRequest,
  timeoutMs: number,
): Promise<NodeReply> {
  let answer: UnixAnswer;
  try {
    answer = await postUnix(socket, path, JSON.stringify(body), timeoutMs);
  } catch (err) {
    return { unreachable: `${socket}: ${(err as Error).message}` };
  }
  let parsed: unknown = answer.body;
  try {
    parsed = JSON.parse(answer.body);
  } catch { /* reported below as not JSON */ }
  return { status: answer.status, body: parsed };
}

async function readConfig(stdin: ByteReader): Promise<string> {
  const bytes = await readUntil(stdin, MAX_STDIN, (b, atEnd) => atEnd ? b : undefined);
  if (bytes === null) {
    throw new CniError(ERR.io, `Cannot read the network config: larger than ${MAX_STDIN} bytes`);
  }
  return new TextDecoder().decode(bytes);
}

/** Parses CNI_ARGS `K=V;K=V`; unknown keys are refused unless IgnoreUnknown is set. */
export function parseCniArgs(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const pair of text.split(";")) {
    if (pair === "") continue;
    const i = pair.indexOf("=");
    if (i <= 0) throw new CniError(ERR.invalidEnv, `Invalid CNI_ARGS: "${pair}" is not KEY=VALUE`);
    out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  const ignore = /^(1|true)$/i.test(out.IgnoreUnknown ?? "");
  const unknown = Object.keys(out).filter((k) => !KNOWN_ARGS.has(k));
  if (unknown.length && !ignore) {
    throw new CniError(
      ERR.invalidEnv,
      `Unknown CNI_ARGS: ${unknown.join(", ")} (set IgnoreUnknown=1 to ignore them)`,
    );
  }
  for (const k of unknown) delete out[k];
  delete out.IgnoreUnknown;
  return out;
}

/** Checks CNI_IFNAME: 1–15 bytes, not . or .., no /, : or whitespace. */
export function validIfname(name: string): boolean {
  return ifnameProblem(name) === undefined;
}

const REQUIRED: Readonly<Record<string, readonly string[]>> = {
  ADD: ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
  CHECK: ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
  DEL: ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"],
  STATUS: ["CNI_COMMAND"],
  GC: ["CNI_COMMAND"],
};

/** Runs one invocation; returns the exit code. */
export async function pluginMain(io: PluginIo = systemIo()): Promise<number> {
  let version = LATEST;
  let logFile: string | undefined;
  let logFormat: LogFormat = "text";
  try {
    logFormat = parseLogFormat(io.env("WGCNI_LOG_FORMAT"));
  } catch { /* a bad value leaves text */ }
  const log = (msg: string, level = "warning") => {
    const line = formatLine(
      { time: Date.now(), level, category: "wgcni.plugin", message: msg, fields: {} },
      logFormat,
      { journal: logFile === undefined && underJournal(io.env) },
    );
    if (logFile) {
      try {
        Deno.writeTextFileSync(logFile, line, { append: true, mode: 0o600 });
        return;
      } catch { /* fall back to stderr */ }
    }
    io.stderr(line);
  };
  try {
    const command = io.env("CNI_COMMAND") ?? "";
    if (!(command in REQUIRED) && command !== "VERSION") {
      throw new CniError(
        ERR.invalidEnv,
        `Unknown CNI_COMMAND "${command}"`,
        "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
      );
    }
    const text = await readConfig(io.stdin);
    if (command === "VERSION") {
      if (text.trim() !== "") {
        const conf = parseConfig(text, false);
        if (typeof conf.cniVersion === "string") {
          version = conf.cniVersion;
          if (!isSupported(conf.cniVersion)) throw incompatible(conf.cniVersion);
        }
      }
      io.stdout(JSON.stringify({ cniVersion: version, supportedVersions: CNI_VERSIONS }) + "\n");
      return 0;
    }
    const conf = parseConfig(text, true);
    version = conf.cniVersion as string;
    if (typeof conf.logFile === "string") logFile = conf.logFile;
    // The network config may choose the format too (runtimes pass plugins little environment).
    if (conf.logFormat === "json" || conf.logFormat === "text") logFormat = conf.logFormat;
    if (!isSupported(version)) {
      const v = version;
      version = LATEST;
      throw incompatible(v);
    }
    if (compareVersions(version, COMMAND_SINCE[command] as string) < 0) {
      throw new CniError(
        ERR.incompatibleVersion,
        `CNI_COMMAND ${command} does not exist in CNI ${version}`,
        `it exists from ${COMMAND_SINCE[command]}`,
      );
    }
    const missing = (REQUIRED[command] as readonly string[]).filter((v) => !io.env(v));
    if (missing.length) {
      throw new CniError(ERR.invalidEnv, `Missing environment variables: ${missing.join(", ")}`);
    }
    const containerId = io.env("CNI_CONTAINERID") ?? "";
    const ifname = io.env("CNI_IFNAME") ?? "";
    const netns = io.env("CNI_NETNS") ?? "";
    const invalid = (name: string, value: string, problem: string | undefined) => {
      if (problem !== undefined) {
        throw new CniError(ERR.invalidEnv, `Invalid ${name} ${quoteValue(value)}: ${problem}`);
      }
    };
    if (containerId) invalid("CNI_CONTAINERID", containerId, containerIdProblem(containerId));
    if (ifname) invalid("CNI_IFNAME", ifname, ifnameProblem(ifname));
    if (command === "ADD" || command === "CHECK") {
      invalid("CNI_NETNS", netns, netnsPathProblem(netns));
    }
    const args = parseCniArgs(io.env("CNI_ARGS"));
    const config: Record<string, unknown> = { ...conf };
    if (command === "DEL") {
      // DEL must succeed whatever was chained before; it reads no prevResult.
      delete config.prevResult;
    } else if (conf.prevResult !== undefined) {
      try {
        config.prevResult = parseResult(conf.prevResult);
      } catch (err) {
        throw new CniError(ERR.invalidConfig, `Invalid prevResult: ${(err as Error).message}`);
      }
    }
    const request: CniRequest = { containerId, ifname, netns, args, config };
    const socket = typeof conf.socket === "string" ? conf.socket : DEFAULT_SOCKET;
    const path = LOCAL_PATHS[command.toLowerCase() as "add"];
    const reply = await io.call(socket, path, request, command === "ADD" ? 60_000 : 30_000);
    if ("unreachable" in reply) {
      log(`node manager unreachable: ${reply.unreachable}`);
      if (command === "DEL" && (netns === "" || !io.netnsExists(netns))) return 0;
      if (command === "STATUS") {
        throw new CniError(
          ERR.statusCantAdd,
          "The wgcni node manager is not running",
          reply.unreachable,
        );
      }
      throw new CniError(
        ERR.tryAgainLater,
        "The wgcni node manager is not reachable; try again later",
        reply.unreachable,
      );
    }
    if (reply.status < 200 || reply.status > 299) {
      const b = reply.body as Partial<CniErrorBody>;
      if (typeof b?.code === "number" && typeof b.msg === "string") {
        throw new CniError(b.code, b.msg, b.details);
      }
      throw new CniError(ERR.io, `The node manager answered ${reply.status} without a CNI error`);
    }
    if (command === "ADD") {
      const result = (reply.body as AddResponse).result;
      io.stdout(JSON.stringify(convertResult(result, version)) + "\n");
    } else if (command === "GC") {
      const gc = reply.body as GcResponse;
      for (const r of gc.released ?? []) log(`GC released ${r.containerId}/${r.ifname}`, "info");
      if (gc.failed?.length) {
        throw new CniError(
          ERR.internal,
          `GC could not release ${gc.failed.length} attachment(s)`,
          gc.failed.map((f) => `${f.containerId}/${f.ifname}: ${f.msg}`).join("; "),
        );
      }
    }
    return 0;
  } catch (err) {
    const e = err instanceof CniError ? err : new CniError(ERR.internal, String(err));
    const body: Record<string, unknown> = { cniVersion: version, code: e.code, msg: e.message };
    if (e.details !== undefined) body.details = e.details;
    io.stdout(JSON.stringify(body) + "\n");
    log(`${io.env("CNI_COMMAND") ?? "?"} failed: code ${e.code}: ${e.message}`);
    return 1;
  }
}

function incompatible(v: string): CniError {
  return new CniError(
    ERR.incompatibleVersion,
    `Incompatible CNI version ${v}`,
    `supported versions: ${CNI_VERSIONS.join(", ")}`,
  );
}

/** Parses the network config; with `strict`, name and cniVersion are required. */
function parseConfig(text: string, strict: boolean): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new CniError(
      ERR.decoding,
      "Cannot decode the network config: invalid JSON",
      (err as Error).message,
    );
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new CniError(ERR.invalidConfig, "Invalid network config: expected a JSON object");
  }
  const conf = v as Record<string, unknown>;
  if (conf.cniVersion !== undefined && typeof conf.cniVersion !== "string") {
    throw new CniError(ERR.invalidConfig, "Invalid network config: cniVersion must be a string");
  }
  if (!strict) return conf;
  const missing = ["cniVersion", "name"].filter((k) => conf[k] === undefined);
  if (missing.length) {
    throw new CniError(ERR.invalidConfig, `Invalid network config: missing ${missing.join(", ")}`);
  }
  if (typeof conf.name !== "string" || conf.name === "") {
    throw new CniError(
      ERR.invalidConfig,
      "Invalid network config: name must be a non-empty string",
    );
  }
  for (const k of ["socket", "logFile", "logFormat", "type"]) {
    if (conf[k] !== undefined && typeof conf[k] !== "string") {
      throw new CniError(ERR.invalidConfig, `Invalid network config: ${k} must be a string`);
    }
  }
  if (conf.logFormat !== undefined && conf.logFormat !== "text" && conf.logFormat !== "json") {
    throw new CniError(
      ERR.invalidConfig,
      `Invalid network config: logFormat must be "text" or "json"`,
    );
  }
  return conf;
}
