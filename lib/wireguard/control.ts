/**
 * The control boundary of WireGuard interfaces: create (kernel or
 * wireguard-go), configure, set or remove one peer, show, delete. Every
 * command goes through a {@linkcode Runner}; every call may name a netns.
 *
 * A userspace interface keeps its control socket
 * (/var/run/wireguard/NAME.sock, shared by all namespaces) under the name it
 * was created with, so `wg` addresses it by that name from the namespace that
 * created it, even after the link was moved elsewhere and renamed.
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

const NAME_RE = /^[A-Za-z0-9_=+.-]{1,15}$/;
const USERSPACE_ENV = { WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: "1" };

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

export class WireGuardControl {
  readonly #runner: Runner;
  readonly #log: Logger | undefined;
  readonly #wgGo: string;
  #backend: Backend | undefined;

  constructor(
    runner: Runner,
    options: { backend?: Backend; logger?: Logger; wireguardGoPath?: string } = {},
  ) {
    this.#runner = runner;
    this.#log = options.logger;
    this.#backend = options.backend;
    this.#wgGo = options.wireguardGoPath ?? "wireguard-go";
  }

  /** The backend in use, once the first interface was created (or it was given). */
  get backend(): Backend | undefined {
    return this.#backend;
  }

  /**
   * Creates an interface (down, no address). The first call chooses the
   * backend: the kernel's when it knows the `wireguard` link type, else
   * wireguard-go; later calls use that choice directly.
   */
  async create(name: string, options: Where & { mtu?: number } = {}): Promise<Backend> {
    checkIfname(name);
    const where = options.netns === undefined ? {} : { netns: options.netns };
    if (this.#backend !== "userspace") {
      const r = await this.#runner.exec(["ip", "link", "add", name, "type", "wireguard"], where);
      if (r.code === 0) {
        this.#backend = "kernel";
      } else if (
        this.#backend === undefined && /Unknown device type|not supported/i.test(r.stderr)
      ) {
        this.#backend = "userspace";
        this.#log?.info("kernel WireGuard is not available; using wireguard-go");
      } else {
        throw new CommandError(["ip", "link", "add", name, "type", "wireguard"], r.code, r.stderr);
      }
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
   * Sets the private key (passed on stdin, never on the command line), the
   * listen port and any first peers, in one `wg set`.
   */
  async configure(
    name: string,
    options: Where & { privateKey: string; listenPort?: number; peers?: readonly Peer[] },
  ): Promise<void> {
    const argv = ["wg", "set", checkIfname(name), "private-key", "/dev/stdin"];
    if (options.listenPort !== undefined) argv.push("listen-port", String(options.listenPort));
    for (const p of options.peers ?? []) argv.push(...peerArgs(p));
    await this.#runner.run(argv, {
      ...(options.netns === undefined ? {} : { netns: options.netns }),
      stdin: parseKey(options.privateKey, "private key") + "\n",
    });
  }

  /** Adds or updates exactly one peer with one `wg set`. */
  async setPeer(name: string, peer: Peer, where: Where = {}): Promise<void> {
    await this.#runner.run(["wg", "set", checkIfname(name), ...peerArgs(peer)], where);
  }

  /** Adds or updates several peers with one `wg set` (a resync; deltas use {@linkcode setPeer}). */
  async setPeers(name: string, peers: readonly Peer[], where: Where = {}): Promise<void> {
    if (peers.length === 0) return;
    await this.#runner.run(["wg", "set", checkIfname(name), ...peers.flatMap(peerArgs)], where);
  }

  /** Removes one peer; no error when it is not there. */
  async removePeer(name: string, publicKey: string, where: Where = {}): Promise<void> {
    await this.#runner.run(
      ["wg", "set", checkIfname(name), "peer", parseKey(publicKey, "peer public key"), "remove"],
      where,
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
