/**
 * The control boundary of WireGuard interfaces: create (kernel or
 * wireguard-go), configure, set or remove one peer, show, delete. Every
 * command goes through a {@linkcode Runner}; every call may name a network
 * namespace (a name under /run/netns or a path), passed through to it.
 *
 * Names. A userspace interface keeps its control socket
 * (`/var/run/wireguard/NAME.sock`, one directory shared by all namespaces)
 * under the name it was created with. So the `wg` calls here ({@linkcode
 * WireGuardControl.configure}, `setPeer`, `removePeer`, `show`,
 * `listenPort`, `exists`) address a userspace interface by its creation name
 * from the namespace that created it, even after the link was moved to
 * another namespace and renamed there; link calls (`delete`) use the name
 * and namespace the link has now. A pod interface is therefore: `create`
 * `wgp1234` in the node's namespace, `configure` and `setPeer` it there, then
 * (the caller's own `ip` calls) `ip link set wgp1234 netns POD` and rename it
 * inside. Its UDP socket stays in the node's namespace.
 *
 * A kernel interface is addressed by its current name in its current
 * namespace; its UDP socket also stays in the namespace that created it.
 */
import { CommandError, type Runner, type RunOptions } from "../ip/runner.ts";
import type { Logger } from "../log.ts";
import { parseDump } from "./dump.ts";
import { parseKey } from "./keys.ts";
import type { InterfaceState, Peer } from "./types.ts";
import { checkCidr, checkEndpoint, checkIfname, checkKeepalive, checkMtu, checkPort } from "./validate.ts";

export { checkIfname };

/** Kernel WireGuard or wireguard-go. */
export type Backend = "kernel" | "userspace";

/** Where a call acts: a network namespace (name under /run/netns or a path), or the runner's own. */
export interface Where {
  readonly netns?: string;
}

/** Options of {@linkcode WireGuardControl}. */
export interface WireGuardControlOptions {
  /** Receives the backend decision and cleanup warnings; never a key. */
  readonly logger?: Logger;
  /** Skip detection and use this backend. */
  readonly backend?: Backend;
  /** The wireguard-go program (default `wireguard-go` from PATH). */
  readonly wireguardGoPath?: string;
  /** How long `delete()` waits for a userspace interface's process to end (default 3000 ms). */
  readonly exitWaitMs?: number;
}

/**
 * wireguard-go on Linux prints a banner urging the kernel module unless told
 * otherwise. An empty LOG_LEVEL keeps the daemon off our pipes: with a level
 * set, it inherits stdout and stderr, and the command would not finish until
 * the interface is deleted.
 */
const USERSPACE_ENV = { WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: "1", LOG_LEVEL: "" };

/** What `ip link add … type wireguard` says when the kernel has no WireGuard. */
const NO_KERNEL_WG = /Unknown device type|Operation not supported|not supported/i;

/** What `ip link del` (or nsenter) says when there is nothing to delete. */
const ALREADY_GONE = /Cannot find device|does not exist|cannot open \S+: No such file or directory/i;

/** The `wg set` arguments for one peer; allowed IPs are replaced exactly. */
export function peerArgs(peer: Peer): string[] {
  const args = ["peer", parseKey(peer.publicKey, "peer public key")];
  if (peer.endpoint !== undefined) args.push("endpoint", checkEndpoint(peer.endpoint));
  if (peer.persistentKeepalive !== undefined) {
    const k = checkKeepalive(peer.persistentKeepalive);
    args.push("persistent-keepalive", k === 0 ? "off" : String(k));
  }
  args.push("allowed-ips", peer.allowedIps.map((a) => checkCidr(a)).join(","));
  return args;
}

function whereOf(where: Where): RunOptions {
  return where.netns === undefined ? {} : { netns: where.netns };
}

function inNs(where: Where): string {
  return where.netns === undefined ? "" : ` in netns ${where.netns}`;
}

/** stderr without wireguard-go's box-drawn banner, on one line. */
function why(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trim())
    .filter((l) => l !== "" && !/[\u2500-\u257f]/.test(l));
  return lines.join("; ") || "no output";
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Creates, configures and removes WireGuard interfaces through one {@linkcode Runner}. */
export class WireGuardControl {
  readonly #runner: Runner;
  readonly #log: Logger | undefined;
  readonly #wgGo: string;
  readonly #exitWaitMs: number;
  #backend: Backend | undefined;
  /** The first create's detection, which concurrent creates wait for. */
  #deciding: Promise<unknown> | undefined;

  constructor(runner: Runner, options: WireGuardControlOptions = {}) {
    this.#runner = runner;
    this.#log = options.logger;
    this.#backend = options.backend;
    this.#wgGo = options.wireguardGoPath ?? "wireguard-go";
    this.#exitWaitMs = options.exitWaitMs ?? 3000;
  }

  /** The backend in use: given, or chosen by the first successful create; undefined before. */
  get backend(): Backend | undefined {
    return this.#backend;
  }

  /**
   * Creates an interface, down and without addresses (the caller adds them
   * and brings it up), with `mtu` when given. The first create chooses the
   * backend for this instance: the kernel's when `ip link add NAME type
   * wireguard` works, wireguard-go when the kernel does not know the link
   * type; later creates use that choice directly. When anything fails after
   * the link exists, the link is removed again before the error is thrown.
   */
  async create(name: string, options: Where & { mtu?: number } = {}): Promise<Backend> {
    checkIfname(name);
    if (options.mtu !== undefined) checkMtu(options.mtu);
    const where = whereOf(options);
    if (this.#backend === undefined && this.#deciding !== undefined) {
      await this.#deciding.catch(() => {});
    }
    let backend = this.#backend;
    if (backend !== "userspace") {
      const attempt = this.#addKernel(name, where, options);
      if (backend === undefined) this.#deciding = attempt;
      backend = await attempt;
    }
    if (backend === "userspace") await this.#startUserspace(name, options);
    if (options.mtu !== undefined) {
      const r = await this.#runner.exec(["ip", "link", "set", name, "mtu", String(options.mtu)], where);
      if (r.code !== 0) {
        await this.#runner.exec(["ip", "link", "del", name], where);
        throw new Error(
          `Cannot set MTU ${options.mtu} on WireGuard interface ${name}${inNs(options)}: ${why(r.stderr)}`,
        );
      }
    }
    return backend;
  }

  /** Tries the kernel link type; returns the backend to go on with. */
  async #addKernel(name: string, where: RunOptions, options: Where): Promise<Backend> {
    const r = await this.#runner.exec(["ip", "link", "add", name, "type", "wireguard"], where);
    if (r.code === 0) {
      if (this.#backend === undefined) this.#log?.info("using kernel WireGuard");
      this.#backend = "kernel";
      return "kernel";
    }
    if (this.#backend === undefined && NO_KERNEL_WG.test(r.stderr)) {
      this.#backend = "userspace";
      this.#log?.info("kernel WireGuard is not available; using wireguard-go");
      return "userspace";
    }
    throw new Error(`Cannot create WireGuard interface ${name}${inNs(options)}: ${why(r.stderr)}`, {
      cause: new CommandError(["ip", "link", "add", name, "type", "wireguard"], r.code, r.stderr),
    });
  }

  /**
   * Runs `wireguard-go NAME`. The parent creates the TUN and the control
   * socket, hands both to a daemon child and exits; a control socket that
   * answers proves the daemon runs, and so that its TUN exists (it exits
   * when the TUN goes).
   */
  async #startUserspace(name: string, options: Where): Promise<void> {
    const where = whereOf(options);
    const r = await this.#runner.exec([this.#wgGo, name], { ...where, env: USERSPACE_ENV });
    if (r.code !== 0) {
      // Nothing of ours to clean: a failed wireguard-go leaves no TUN (it is not persistent),
      // and a link of that name that exists belongs to someone else.
      throw new Error(
        `Cannot create WireGuard interface ${name}${inNs(options)} with ${this.#wgGo}: ${
          why(r.stderr)
        }`,
      );
    }
    const probe = await this.#runner.exec(["wg", "show", name, "listen-port"], where);
    if (probe.code !== 0) {
      await this.#runner.exec(["ip", "link", "del", name], where);
      throw new Error(
        `Cannot create WireGuard interface ${name}${inNs(options)}: ${this.#wgGo} exited ` +
          `but its control socket /var/run/wireguard/${name}.sock does not answer: ${
            why(probe.stderr)
          }`,
      );
    }
  }

  /**
   * Sets the private key (written to `wg` on stdin, never on its command
   * line, which /proc shows to everyone), the listen port (0 = any) and any
   * first peers, in one `wg set`.
   */
  async configure(
    name: string,
    options: Where & { privateKey: string; listenPort?: number; peers?: readonly Peer[] },
  ): Promise<void> {
    const argv = ["wg", "set", checkIfname(name), "private-key", "/dev/stdin"];
    if (options.listenPort !== undefined) {
      argv.push("listen-port", String(checkPort(options.listenPort, { allowZero: true })));
    }
    for (const p of options.peers ?? []) argv.push(...peerArgs(p));
    const stdin = parseKey(options.privateKey, "private key") + "\n";
    await this.#runner.run(argv, { ...whereOf(options), stdin });
  }

  /** Adds or updates exactly one peer with one `wg set` (its allowed IPs replaced exactly). */
  async setPeer(name: string, peer: Peer, where: Where = {}): Promise<void> {
    await this.#runner.run(["wg", "set", checkIfname(name), ...peerArgs(peer)], whereOf(where));
  }

  /** Removes one peer with one `wg set`; no error when it is not there. */
  async removePeer(name: string, publicKey: string, where: Where = {}): Promise<void> {
    await this.#runner.run(
      ["wg", "set", checkIfname(name), "peer", parseKey(publicKey, "peer public key"), "remove"],
      whereOf(where),
    );
  }

  /** The interface and its peers as WireGuard reports them (never the private key). */
  async show(name: string, where: Where = {}): Promise<InterfaceState> {
    const dump = await this.#runner.run(["wg", "show", checkIfname(name), "dump"], whereOf(where));
    return parseDump(dump);
  }

  /** The UDP port the interface listens on (0 while it has none). */
  async listenPort(name: string, where: Where = {}): Promise<number> {
    const out = await this.#runner.run(
      ["wg", "show", checkIfname(name), "listen-port"],
      whereOf(where),
    );
    const t = out.trim();
    if (!/^\d{1,5}$/.test(t)) {
      throw new SyntaxError(`Cannot read the listen port of ${name}: wg printed no number`);
    }
    return Number(t);
  }

  /** True when a WireGuard interface of that name answers `wg` there. */
  async exists(name: string, where: Where = {}): Promise<boolean> {
    const r = await this.#runner.exec(
      ["wg", "show", checkIfname(name), "listen-port"],
      whereOf(where),
    );
    return r.code === 0;
  }

  /**
   * Deletes the link `name` where it is now; no error when it (or its
   * namespace) is already gone. A wireguard-go interface's process ends when
   * its TUN goes; when this instance runs wireguard-go (or `createdAs` names
   * the creation name of a renamed link), delete waits until that process no
   * longer answers, so the name can be used again at once.
   */
  async delete(name: string, options: Where & { createdAs?: string } = {}): Promise<void> {
    checkIfname(name);
    if (options.createdAs !== undefined) checkIfname(options.createdAs);
    const where = whereOf(options);
    const r = await this.#runner.exec(["ip", "link", "del", name], where);
    if (r.code !== 0) {
      if (ALREADY_GONE.test(r.stderr)) return;
      throw new Error(`Cannot delete interface ${name}${inNs(options)}: ${why(r.stderr)}`);
    }
    const userspace = this.#backend === "userspace" ||
      (this.#backend === undefined && options.createdAs !== undefined);
    if (userspace) await this.#waitExited(options.createdAs ?? name, where);
  }

  async #waitExited(socketName: string, where: RunOptions): Promise<void> {
    const end = Date.now() + this.#exitWaitMs;
    for (let delay = 5;; delay = Math.min(delay * 2, 100)) {
      const r = await this.#runner.exec(["wg", "show", socketName, "listen-port"], where);
      if (r.code !== 0) return;
      if (Date.now() >= end) break;
      await sleep(delay);
    }
    this.#log?.warn(
      "wireguard-go of {name} still answers {ms} ms after its link was deleted",
      { name: socketName, ms: this.#exitWaitMs },
    );
  }
}
