/**
 * One device configuration, wgctrl's way: every field left unset means
 * "unchanged", destructive changes are explicit (`replacePeers`, a peer's
 * `remove`), and one `configure()` applies it. Each WireGuard implementation
 * has its own {@linkcode DeviceControl}: `wg` over a {@linkcode Runner} (the
 * kernel's netlink interface), and wireguard-go's control socket.
 */
import type { Runner } from "../ip/runner.ts";
import { parseDump } from "./dump.ts";
import { parseKey } from "./keys.ts";
import type { InterfaceState } from "./types.ts";
import { checkCidr, checkEndpoint } from "./validate.ts";

/** A change to one peer; unset fields are left as they are. */
export interface PeerConfig {
  readonly publicKey: string;
  /** The peer goes; every other field is ignored. */
  readonly remove?: boolean;
  /** `IP:PORT` or `[IPv6]:PORT`. */
  readonly endpoint?: string;
  /** Seconds; 0 turns it off. */
  readonly persistentKeepalive?: number;
  /** Replaces the peer's allowed IPs exactly (an empty list removes them all). */
  readonly allowedIps?: readonly string[];
}

/** A change to a device; unset fields are left as they are. */
export interface DeviceConfig {
  /** Never on a command line: `wg` reads it from stdin, the control socket from its request. */
  readonly privateKey?: string;
  /** 0 lets the implementation choose a free port. */
  readonly listenPort?: number;
  /** Removes every peer not in `peers` first. */
  readonly replacePeers?: boolean;
  readonly peers?: readonly PeerConfig[];
}

/** Where a call acts: a network namespace (name or path), or the caller's own. */
export interface Where {
  readonly netns?: string;
}

/** How one WireGuard implementation is configured and read. */
export interface DeviceControl {
  configure(name: string, config: DeviceConfig, where?: Where): Promise<void>;
  /** The UDP port the device listens on (0 when none is bound). */
  listenPort(name: string, where?: Where): Promise<number>;
}

/** The `wg set` arguments of a configuration, after `wg set NAME`. */
export function wgSetArgs(config: DeviceConfig): string[] {
  const args: string[] = [];
  if (config.privateKey !== undefined) args.push("private-key", "/dev/stdin");
  if (config.listenPort !== undefined) args.push("listen-port", String(config.listenPort));
  for (const p of config.peers ?? []) {
    args.push("peer", parseKey(p.publicKey, "peer public key"));
    if (p.remove) {
      args.push("remove");
      continue;
    }
    if (p.endpoint !== undefined) args.push("endpoint", checkEndpoint(p.endpoint));
    if (p.persistentKeepalive !== undefined) {
      args.push("persistent-keepalive", String(p.persistentKeepalive || "off"));
    }
    if (p.allowedIps !== undefined) {
      args.push("allowed-ips", p.allowedIps.map((a) => checkCidr(a)).join(","));
    }
  }
  return args;
}

/** The control-socket request of a configuration (`set=1` … empty line). */
export function uapiSetRequest(config: DeviceConfig): string {
  const lines = ["set=1"];
  if (config.privateKey !== undefined) {
    lines.push(`private_key=${keyHex(config.privateKey, "private key")}`);
  }
  if (config.listenPort !== undefined) lines.push(`listen_port=${config.listenPort}`);
  if (config.replacePeers) lines.push("replace_peers=true");
  for (const p of config.peers ?? []) {
    lines.push(`public_key=${keyHex(p.publicKey, "peer public key")}`);
    if (p.remove) {
      lines.push("remove=true");
      continue;
    }
    if (p.endpoint !== undefined) lines.push(`endpoint=${checkEndpoint(p.endpoint)}`);
    if (p.persistentKeepalive !== undefined) {
      lines.push(`persistent_keepalive_interval=${p.persistentKeepalive || 0}`);
    }
    if (p.allowedIps !== undefined) {
      lines.push("replace_allowed_ips=true");
      for (const a of p.allowedIps) lines.push(`allowed_ip=${checkCidr(a)}`);
    }
  }
  return lines.join("\n") + "\n\n";
}

/** A base64 key as the control socket takes it: 64 hex digits. */
function keyHex(key: string, what: string): string {
  return [...atob(parseKey(key, what))].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0"))
    .join("");
}

function whereOf(where: Where): Where {
  return where.netns === undefined ? {} : { netns: where.netns };
}

/**
 * `wg set` and `wg show`: the kernel's implementation (over netlink), and
 * any wireguard-go `wg` finds by name in the socket directory.
 */
export class WgTool implements DeviceControl {
  readonly #runner: Runner;

  constructor(runner: Runner) {
    this.#runner = runner;
  }

  async configure(name: string, config: DeviceConfig, where: Where = {}): Promise<void> {
    if (config.replacePeers) {
      // `wg set` has no "replace peers": the peers not named go one by one.
      const named = new Set((config.peers ?? []).map((p) => p.publicKey));
      const stale = (await this.show(name, where)).peers.filter((p) => !named.has(p.publicKey));
      const gone = stale.map((p) => ({ publicKey: p.publicKey, remove: true }));
      config = { ...config, replacePeers: false, peers: [...gone, ...(config.peers ?? [])] };
    }
    const args = wgSetArgs(config);
    if (args.length === 0) return;
    await this.#runner.run(["wg", "set", name, ...args], {
      ...whereOf(where),
      ...(config.privateKey !== undefined
        ? { stdin: parseKey(config.privateKey, "private key") + "\n" }
        : {}),
    });
  }

  async listenPort(name: string, where: Where = {}): Promise<number> {
    const out = await this.#runner.run(["wg", "show", name, "listen-port"], whereOf(where));
    const port = Number(out.trim());
    if (!Number.isInteger(port)) {
      throw new Error(`Cannot read the listen port of ${name}: wg printed "${out.trim()}"`);
    }
    return port;
  }

  /** The device and its peers as WireGuard reports them (no private key). */
  async show(name: string, where: Where = {}): Promise<InterfaceState> {
    return parseDump(await this.#runner.run(["wg", "show", name, "dump"], whereOf(where)));
  }
}

/** One request/reply exchange on a control socket; the reply ends with an empty line. */
export type SocketExchange = (path: string, request: string) => Promise<string>;

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

/**
 * wireguard-go's control socket, spoken directly (no `wg` process). The
 * socket is found by the name the device was created with, whatever the
 * namespace its TUN is in now; a device without a listening socket (a
 * kernel one, or a wireguard-go that is gone) is handed to `wg`, which
 * tries once more and reports.
 */
export class UapiSocket implements DeviceControl {
  readonly #dir: string;
  readonly #exchange: SocketExchange;
  readonly #fallback: DeviceControl;
  readonly #onFallback: ((name: string, err: unknown) => void) | undefined;

  constructor(
    options: {
      dir: string;
      exchange: SocketExchange;
      fallback: DeviceControl;
      onFallback?: (name: string, err: unknown) => void;
    },
  ) {
    this.#dir = options.dir;
    this.#exchange = options.exchange;
    this.#fallback = options.fallback;
    this.#onFallback = options.onFallback;
  }

  /** The control socket of a device created as `name`. */
  path(name: string): string {
    return `${this.#dir}/${name}.sock`;
  }

  async configure(name: string, config: DeviceConfig, where: Where = {}): Promise<void> {
    const request = uapiSetRequest(config);
    if (request === "set=1\n\n") return;
    const done = await this.#send(name, "configure", request);
    if (done === undefined) await this.#fallback.configure(name, config, where);
  }

  async listenPort(name: string, where: Where = {}): Promise<number> {
    const state = await this.#send(name, "read the listen port of", "get=1\n\n");
    if (state === undefined) return await this.#fallback.listenPort(name, where);
    return Number(state.get("listen_port") ?? 0);
  }

  /** One request; undefined when no wireguard-go listens there. */
  async #send(name: string, op: string, request: string): Promise<Map<string, string> | undefined> {
    let reply: string;
    try {
      reply = await this.#exchange(this.path(name), request);
    } catch (err) {
      if (
        err instanceof Deno.errors.NotFound || err instanceof Deno.errors.ConnectionRefused ||
        err instanceof Deno.errors.ConnectionReset
      ) {
        // No socket, nobody listening, or dropped unanswered (every request
        // here may be sent again).
        this.#onFallback?.(name, err);
        return undefined;
      }
      throw new Error(`Cannot ${op} ${name}: its control socket failed: ${(err as Error).message}`);
    }
    return parseReply(name, op, reply);
  }
}
