/**
 * The control boundary of WireGuard interfaces: create (kernel or
 * wireguard-go), configure (one {@linkcode DeviceConfig}, unset means
 * unchanged), show, delete. Every command goes through a {@linkcode Runner};
 * every call may name a netns.
 *
 * Configuration goes to the backend's own {@linkcode DeviceControl}: `wg`
 * for kernel interfaces, wireguard-go's control socket for userspace ones.
 * A userspace interface keeps its socket (/var/run/wireguard/NAME.sock,
 * shared by all namespaces) under the name it was created with, so it is
 * addressed by that name from anywhere, even after its TUN was moved into
 * another namespace and renamed; a kernel interface by its current name in
 * the namespace it is in.
 */
import type { Runner } from "../ip/runner.ts";
import { CommandError } from "../ip/runner.ts";
import type { Logger } from "../log.ts";
import { parseDump } from "./dump.ts";
import type { InterfaceState, Peer } from "./types.ts";
import {
  type DeviceConfig,
  type DeviceControl,
  type SocketExchange,
  UapiSocket,
  WgTool,
  type Where,
} from "./device.ts";

export type { DeviceConfig, PeerConfig, SocketExchange, Where } from "./device.ts";

/** Kernel WireGuard or wireguard-go. */
export type Backend = "kernel" | "userspace";

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
  readonly #tool: WgTool;
  readonly #uapi: UapiSocket;
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
      /** How wireguard-go's control socket is talked to (default: a Unix socket). */
      socketExchange?: SocketExchange;
    } = {},
  ) {
    this.#runner = runner;
    this.#log = options.logger;
    this.#backend = options.backend;
    this.#wgGo = options.wireguardGoPath ?? "wireguard-go";
    this.#tool = new WgTool(runner);
    this.#uapi = new UapiSocket({
      dir: options.socketDir ?? USERSPACE_SOCKET_DIR,
      exchange: options.socketExchange ?? unixSocketExchange,
      fallback: this.#tool,
      onFallback: (name, err) =>
        this.#log?.debug("control socket of {name} unusable ({error}); using wg", {
          name,
          error: err,
        }),
    });
  }

  /** The control socket of a wireguard-go interface created as `name`. */
  socketPath(name: string): string {
    return this.#uapi.path(checkIfname(name));
  }

  /** The backend in use, once the first interface was created (or it was given). */
  get backend(): Backend | undefined {
    return this.#backend;
  }

  /**
   * Takes `backend` as this node's when none is decided yet: an adopted
   * interface's, told by its link kind. Later create() calls use it directly.
   */
  assume(backend: Backend): void {
    this.#backend ??= backend;
  }

  /** The implementation configuration goes to: wireguard-go's socket, else `wg`. */
  get #device(): DeviceControl {
    return this.#backend === "userspace" ? this.#uapi : this.#tool;
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
    const where = whereOf(options);
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
   * Applies one configuration change (unset fields unchanged) in one
   * exchange: one `wg set` (the private key on its stdin) or one
   * control-socket request. A wireguard-go interface is named by its
   * creation name wherever its TUN is.
   */
  async configure(name: string, config: DeviceConfig, where: Where = {}): Promise<void> {
    await this.#device.configure(checkIfname(name), config, whereOf(where));
  }

  /** The UDP port the interface listens on (0 when none). */
  async listenPort(name: string, where: Where = {}): Promise<number> {
    return await this.#device.listenPort(checkIfname(name), whereOf(where));
  }

  /** Adds or updates exactly one peer (its allowed IPs replaced exactly). */
  async setPeer(name: string, peer: Peer, where: Where = {}): Promise<void> {
    await this.configure(name, { peers: [peer] }, where);
  }

  /** Adds or updates several peers in one exchange (a resync; deltas use {@linkcode setPeer}). */
  async setPeers(name: string, peers: readonly Peer[], where: Where = {}): Promise<void> {
    if (peers.length === 0) return;
    await this.configure(name, { peers }, where);
  }

  /** Removes one peer; no error when it is not there. */
  async removePeer(name: string, publicKey: string, where: Where = {}): Promise<void> {
    await this.configure(name, { peers: [{ publicKey, remove: true }] }, where);
  }

  /** The interface and its peers as WireGuard reports them (no private key). */
  async show(name: string, where: Where = {}): Promise<InterfaceState> {
    return parseDump(
      await this.#runner.run(["wg", "show", checkIfname(name), "dump"], whereOf(where)),
    );
  }

  /** True when a WireGuard interface of that name answers `wg show`. */
  async exists(name: string, where: Where = {}): Promise<boolean> {
    const r = await this.#runner.exec(
      ["wg", "show", checkIfname(name), "listen-port"],
      whereOf(where),
    );
    return r.code === 0;
  }

  /** Deletes the link; no error when it is already gone. wireguard-go exits when its TUN goes. */
  async delete(name: string, where: Where = {}): Promise<void> {
    const r = await this.#runner.exec(["ip", "link", "del", checkIfname(name)], whereOf(where));
    if (r.code !== 0 && !/Cannot find device|does not exist/i.test(r.stderr)) {
      throw new CommandError(["ip", "link", "del", name], r.code, r.stderr);
    }
  }
}

/** Only the namespace of a {@linkcode Where}. */
function whereOf(where: Where): Where {
  return where.netns === undefined ? {} : { netns: where.netns };
}
