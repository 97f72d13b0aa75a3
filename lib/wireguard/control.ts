/**
 * The control boundary of WireGuard interfaces: create (kernel or
 * wireguard-go), configure, set or remove one peer, show, delete. Every
 * command goes through a {@linkcode Runner}; every call may name a netns.
 *
 * A userspace interface keeps its control socket
 * (/var/run/wireguard/NAME.sock, shared by all namespaces) under the name it
 * was created with, so `wg` addresses it by that name from the namespace that
 * created it, even after the link was moved elsewhere and renamed. Calls
 * given {@linkcode Reach.socket} talk to that socket themselves (the
 * protocol `wg` speaks to wireguard-go) instead of running `wg`.
 */
import type { Runner } from "../ip/runner.ts";
import { CommandError } from "../ip/runner.ts";
import type { Logger } from "../log.ts";
import { parseDump } from "./dump.ts";
import { parseKey } from "./keys.ts";
import type { InterfaceState, Peer } from "./types.ts";
import { checkCidr, checkEndpoint } from "./validate.ts";

/** Kernel WireGuard or wireguard-go. */
export type Backend = "kernel" | "userspace";

/** Where a call acts: a network namespace (name or path), or the caller's own. */
export interface Where {
  readonly netns?: string;
}

/** Where a call acts, and how it reaches the interface. */
export interface Reach extends Where {
  /**
   * Exchange with wireguard-go's control socket directly, with no `wg`
   * process. Like `wg`, the socket is found by the interface's creation
   * name whatever the namespace; an interface without a listening socket (a
   * kernel one) is reached with `wg` as usual.
   */
  readonly socket?: boolean;
}

/** One request/reply exchange on a control socket; the reply ends with an empty line. */
export type SocketExchange = (path: string, request: string) => Promise<string>;

const NAME_RE = /^[A-Za-z0-9_=+.-]{1,15}$/;
const USERSPACE_ENV = { WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: "1" };
/** Where wireguard-go puts its control sockets (one directory for every namespace). */
export const USERSPACE_SOCKET_DIR = "/var/run/wireguard";

/** Checks an interface name (1–15 bytes, no slash, colon or space). */
export function checkIfname(name: string): string {
  if (!NAME_RE.test(name) || name === "." || name === "..") {
    throw new TypeError(
      `Cannot use interface name "${name}": expected 1-15 letters, digits or _=+.-`,
    );
  }
  return name;
}

/** The `wg set` arguments for one peer (allowed IPs are replaced exactly). */
export function peerArgs(peer: Peer): string[] {
  const args = ["peer", parseKey(peer.publicKey, "peer public key")];
  if (peer.endpoint !== undefined) args.push("endpoint", checkEndpoint(peer.endpoint));
  if (peer.persistentKeepalive !== undefined) {
    args.push("persistent-keepalive", String(peer.persistentKeepalive || "off"));
  }
  args.push("allowed-ips", peer.allowedIps.map((a) => checkCidr(a)).join(","));
  return args;
}

/** The control-socket lines for one peer, with the same meaning as {@linkcode peerArgs}. */
export function peerLines(peer: Peer): string[] {
  const lines = [`public_key=${keyHex(peer.publicKey, "peer public key")}`];
  if (peer.endpoint !== undefined) lines.push(`endpoint=${checkEndpoint(peer.endpoint)}`);
  if (peer.persistentKeepalive !== undefined) {
    lines.push(`persistent_keepalive_interval=${peer.persistentKeepalive || 0}`);
  }
  lines.push("replace_allowed_ips=true");
  for (const a of peer.allowedIps) lines.push(`allowed_ip=${checkCidr(a)}`);
  return lines;
}

/** A base64 key as the control socket takes it: 64 hex digits. */
function keyHex(key: string, what: string): string {
  return [...atob(parseKey(key, what))].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0"))
    .join("");
}

/**
 * The `key=value` lines of a control-socket reply; an `errno` other than 0
 * is an error naming only the interface and the operation.
 */
function parseReply(name: string, op: string, reply: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of reply.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) fields.set(line.slice(0, eq), line.slice(eq + 1));
  }
  const errno = fields.get("errno");
  if (errno !== "0") {
    throw new Error(
      `Cannot ${op} ${name}: wireguard-go answered ${
        errno === undefined ? "nothing" : `error ${errno}`
      }`,
    );
  }
  return fields;
}

const SOCKET_TIMEOUT_MS = 10_000;

/** One exchange on a Unix socket: the request, then the reply up to its empty line. */
export async function unixSocketExchange(path: string, request: string): Promise<string> {
  const conn = await Deno.connect({ transport: "unix", path });
  const timer = setTimeout(() => conn.close(), SOCKET_TIMEOUT_MS);
  const decoder = new TextDecoder();
  try {
    const bytes = new TextEncoder().encode(request);
    for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
    bytes.fill(0);
    let reply = "";
    const buf = new Uint8Array(4096);
    while (!reply.endsWith("\n\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      reply += decoder.decode(buf.subarray(0, n), { stream: true });
    }
    buf.fill(0);
    return reply;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // Closed by the timeout.
    }
  }
}

export class WireGuardControl {
  readonly #runner: Runner;
  readonly #log: Logger | undefined;
  readonly #wgGo: string;
  readonly #socketDir: string;
  readonly #exchange: SocketExchange;
  #backend: Backend | undefined;
  /** The first create() while the backend is unknown; the others wait for it to decide. */
  #deciding: Promise<unknown> | undefined;

  constructor(
    runner: Runner,
    options: {
      backend?: Backend;
      logger?: Logger;
      wireguardGoPath?: string;
      /** wireguard-go's control socket directory (default {@linkcode USERSPACE_SOCKET_DIR}). */
      socketDir?: string;
      /** How {@linkcode Reach.socket} calls talk to a control socket (default: a Unix socket). */
      socketExchange?: SocketExchange;
    } = {},
  ) {
    this.#runner = runner;
    this.#log = options.logger;
    this.#backend = options.backend;
    this.#wgGo = options.wireguardGoPath ?? "wireguard-go";
    this.#socketDir = options.socketDir ?? USERSPACE_SOCKET_DIR;
    this.#exchange = options.socketExchange ?? unixSocketExchange;
  }

  /** The control socket of a wireguard-go interface created as `name`. */
  socketPath(name: string): string {
    return `${this.#socketDir}/${checkIfname(name)}.sock`;
  }

  /** The backend in use, once the first interface was created (or it was given). */
  get backend(): Backend | undefined {
    return this.#backend;
  }

  /**
   * Creates an interface (down, no address). The first call chooses the
   * backend: the kernel's when it knows the `wireguard` link type, else
   * wireguard-go; calls made meanwhile wait for that choice (each asking the
   * kernel again would take its "Unknown device type" for a failure once the
   * first had chosen), and later calls use it directly.
   */
  async create(name: string, options: Where & { mtu?: number } = {}): Promise<Backend> {
    checkIfname(name);
    const where = options.netns === undefined ? {} : { netns: options.netns };
    let made = false;
    while (this.#backend === undefined) {
      if (this.#deciding) {
        await this.#deciding;
        continue;
      }
      // This call decides, with its own interface as the probe. Should it
      // fail otherwise (the name is taken), the next waiting call decides.
      const attempt = this.#addKernelLink(name, where);
      this.#deciding = attempt.then((b) => {
        this.#backend = b;
      }, () => {}).finally(() => {
        this.#deciding = undefined;
      });
      made = (await attempt) === "kernel";
    }
    if (this.#backend === "kernel" && !made) {
      await this.#runner.run(["ip", "link", "add", name, "type", "wireguard"], where);
    }
    if (this.#backend === "userspace") {
      await this.#runner.run([this.#wgGo, name], { ...where, env: USERSPACE_ENV });
    }
    if (options.mtu !== undefined) {
      await this.#runner.run(["ip", "link", "set", name, "mtu", String(options.mtu)], where);
    }
    return this.#backend as Backend;
  }

  /**
   * `ip link add NAME type wireguard`: "kernel" when it worked, "userspace"
   * when the kernel does not know the link type; any other failure throws.
   */
  async #addKernelLink(name: string, where: Where): Promise<Backend> {
    const argv = ["ip", "link", "add", name, "type", "wireguard"];
    const r = await this.#runner.exec(argv, where);
    if (r.code === 0) return "kernel";
    if (/Unknown device type|not supported/i.test(r.stderr)) {
      if (this.#backend === undefined) {
        this.#log?.info("kernel WireGuard is not available; using wireguard-go");
      }
      return "userspace";
    }
    throw new CommandError(argv, r.code, r.stderr);
  }

  /**
   * Sends one request to the control socket of `name`; undefined when no
   * wireguard-go listens there (the caller falls back to `wg`).
   */
  async #viaSocket(
    name: string,
    op: string,
    request: string,
  ): Promise<Map<string, string> | undefined> {
    let reply: string;
    try {
      reply = await this.#exchange(this.socketPath(name), request);
    } catch (err) {
      if (
        err instanceof Deno.errors.NotFound || err instanceof Deno.errors.ConnectionRefused ||
        err instanceof Deno.errors.ConnectionReset
      ) {
        // No socket, nobody listening, or dropped unanswered (every request
        // here may be sent again): `wg` tries once more and reports.
        this.#log?.debug("control socket of {name} unusable ({error}); using wg", {
          name,
          error: err,
        });
        return undefined;
      }
      throw new Error(`Cannot ${op} ${name}: its control socket failed: ${(err as Error).message}`);
    }
    return parseReply(name, op, reply);
  }

  /**
   * Sets the private key (passed on stdin or the control socket, never on a
   * command line), the listen port and any first peers, in one `wg set` or
   * one control-socket exchange.
   */
  async configure(
    name: string,
    options: Reach & { privateKey: string; listenPort?: number; peers?: readonly Peer[] },
  ): Promise<void> {
    checkIfname(name);
    if (options.socket) {
      const lines = ["set=1", `private_key=${keyHex(options.privateKey, "private key")}`];
      if (options.listenPort !== undefined) lines.push(`listen_port=${options.listenPort}`);
      for (const p of options.peers ?? []) lines.push(...peerLines(p));
      const done = await this.#viaSocket(name, "configure", lines.join("\n") + "\n\n");
      if (done) return;
    }
    const argv = ["wg", "set", name, "private-key", "/dev/stdin"];
    if (options.listenPort !== undefined) argv.push("listen-port", String(options.listenPort));
    for (const p of options.peers ?? []) argv.push(...peerArgs(p));
    await this.#runner.run(argv, {
      ...(options.netns === undefined ? {} : { netns: options.netns }),
      stdin: parseKey(options.privateKey, "private key") + "\n",
    });
  }

  /** The UDP port the interface listens on (0 when none). */
  async listenPort(name: string, reach: Reach = {}): Promise<number> {
    checkIfname(name);
    if (reach.socket) {
      const state = await this.#viaSocket(name, "read the listen port of", "get=1\n\n");
      if (state) return Number(state.get("listen_port") ?? 0);
    }
    const out = await this.#runner.run(["wg", "show", name, "listen-port"], where(reach));
    const port = Number(out.trim());
    if (!Number.isInteger(port)) {
      throw new Error(`Cannot read the listen port of ${name}: wg printed "${out.trim()}"`);
    }
    return port;
  }

  /** Adds or updates exactly one peer with one `wg set` (or control-socket exchange). */
  async setPeer(name: string, peer: Peer, reach: Reach = {}): Promise<void> {
    checkIfname(name);
    if (reach.socket) {
      const request = ["set=1", ...peerLines(peer)].join("\n") + "\n\n";
      if (await this.#viaSocket(name, "set a peer of", request)) return;
    }
    await this.#runner.run(["wg", "set", name, ...peerArgs(peer)], where(reach));
  }

  /** Adds or updates several peers with one `wg set` (a resync; deltas use {@linkcode setPeer}). */
  async setPeers(name: string, peers: readonly Peer[], where: Where = {}): Promise<void> {
    if (peers.length === 0) return;
    await this.#runner.run(["wg", "set", checkIfname(name), ...peers.flatMap(peerArgs)], where);
  }

  /** Removes one peer; no error when it is not there. */
  async removePeer(name: string, publicKey: string, reach: Reach = {}): Promise<void> {
    checkIfname(name);
    if (reach.socket) {
      const request = `set=1\npublic_key=${keyHex(publicKey, "peer public key")}\nremove=true\n\n`;
      if (await this.#viaSocket(name, "remove a peer of", request)) return;
    }
    await this.#runner.run(
      ["wg", "set", name, "peer", parseKey(publicKey, "peer public key"), "remove"],
      where(reach),
    );
  }

  /** The interface and its peers as WireGuard reports them (no private key). */
  async show(name: string, where: Where = {}): Promise<InterfaceState> {
    return parseDump(await this.#runner.run(["wg", "show", checkIfname(name), "dump"], where));
  }

  /** True when a WireGuard interface of that name answers `wg show`. */
  async exists(name: string, where: Where = {}): Promise<boolean> {
    const r = await this.#runner.exec(["wg", "show", checkIfname(name), "listen-port"], where);
    return r.code === 0;
  }

  /** Deletes the link; no error when it is already gone. wireguard-go exits when its TUN goes. */
  async delete(name: string, where: Where = {}): Promise<void> {
    const r = await this.#runner.exec(["ip", "link", "del", checkIfname(name)], where);
    if (r.code !== 0 && !/Cannot find device|does not exist/i.test(r.stderr)) {
      throw new CommandError(["ip", "link", "del", name], r.code, r.stderr);
    }
  }
}

/** The namespace part of a {@linkcode Reach}. */
function where(reach: Reach): Where {
  return reach.netns === undefined ? {} : { netns: reach.netns };
}
