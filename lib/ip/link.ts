/**
 * Links, addresses and routes in wgcni's words, over `ip` (iproute2) through
 * a {@linkcode Runner}: the command lines and the parsing of `ip -j` live
 * here, not in the modes that use them. Every call may name a namespace.
 */
import { cidrFamily, familyOf } from "../domain/address.ts";
import type { Runner, RunResult } from "./runner.ts";

/** Where a call acts: a network namespace (name or path), or the caller's own. */
export interface IpWhere {
  readonly netns?: string;
}

/** A link as `ip -d -j addr show` reports it. */
export interface LinkInfo {
  readonly ifname: string;
  /** `wireguard`, `tun`, `veth`, …; undefined for a plain device. */
  readonly kind: string | undefined;
  readonly up: boolean;
  readonly mtu: number | undefined;
  /** Its addresses as `address/prefix`. */
  readonly cidrs: readonly string[];
}

/** One change on a link, several of which go in one `ip -batch`. */
export type LinkStep =
  /** An address (`replace` when it may be there already); IPv6 ones without DAD. */
  | { readonly op: "address"; readonly cidr: string; readonly replace?: boolean }
  /** Up, with this MTU if given. */
  | { readonly op: "up"; readonly mtu?: number }
  /** A route through the link (`replace` when it may be there already), from `src` if given. */
  | {
    readonly op: "route";
    readonly dst: string;
    readonly replace?: boolean;
    readonly src?: string;
  }
  /** No route to `dst` through the link. */
  | { readonly op: "unroute"; readonly dst: string };

interface LinkJson {
  readonly ifname?: unknown;
  readonly flags?: readonly string[];
  readonly mtu?: number;
  readonly linkinfo?: { readonly info_kind?: string };
  readonly addr_info?: readonly { readonly local: string; readonly prefixlen: number }[];
}

/** Links of `ip -j … show` output; none when it cannot be parsed. */
export function parseLinks(json: string): LinkInfo[] {
  let list: LinkJson[];
  try {
    list = JSON.parse(json || "[]") as LinkJson[];
  } catch {
    return [];
  }
  return list.filter((l) => typeof l.ifname === "string").map((l) => ({
    ifname: l.ifname as string,
    kind: l.linkinfo?.info_kind,
    up: l.flags?.includes("UP") === true,
    mtu: l.mtu,
    cidrs: (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`),
  }));
}

/** The `ip -batch` lines of steps on `dev`. */
export function stepLines(dev: string, steps: readonly LinkStep[]): string[] {
  return steps.map((s) => {
    switch (s.op) {
      case "address":
        return `addr ${s.replace ? "replace" : "add"} ${s.cidr} dev ${dev}${
          cidrFamily(s.cidr) === 6 ? " nodad" : ""
        }`;
      case "up":
        return `link set ${dev}${s.mtu !== undefined ? ` mtu ${s.mtu}` : ""} up`;
      case "route":
        return `route ${s.replace ? "replace" : "add"} ${s.dst} dev ${dev}${
          s.src !== undefined ? ` src ${s.src}` : ""
        }`;
      case "unroute":
        return `route del ${s.dst} dev ${dev}`;
    }
  });
}

function whereOf(where: IpWhere): IpWhere {
  return where.netns === undefined ? {} : { netns: where.netns };
}

export class Ip {
  readonly #runner: Runner;

  constructor(runner: Runner) {
    this.#runner = runner;
  }

  /** Every link of a namespace with its addresses, or only `name` (none when it is not there). */
  async links(where: IpWhere = {}, name?: string): Promise<LinkInfo[]> {
    const argv = ["ip", "-d", "-j", "addr", "show", ...(name ? ["dev", name] : [])];
    const r = await this.#runner.exec(argv, whereOf(where));
    return r.code === 0 ? parseLinks(r.stdout) : [];
  }

  /** The kind of link `name` (`wireguard`, `tun`, …); throws when it is not there. */
  async kindOf(name: string, where: IpWhere = {}): Promise<string | undefined> {
    const out = await this.#runner.run(["ip", "-d", "-j", "link", "show", name], whereOf(where));
    return parseLinks(out)[0]?.kind;
  }

  /** The destinations routed through `dev`, both families (`default` as 0.0.0.0/0 and ::/0). */
  async routesVia(dev: string, where: IpWhere = {}): Promise<string[]> {
    const dsts: string[] = [];
    for (const [fam, any] of [["-4", "0.0.0.0/0"], ["-6", "::/0"]] as const) {
      const r = await this.#runner.exec(
        ["ip", "-j", fam, "route", "show", "dev", dev],
        whereOf(where),
      );
      if (r.code !== 0) continue;
      try {
        for (const route of JSON.parse(r.stdout || "[]") as { dst?: string }[]) {
          if (route.dst !== undefined) dsts.push(route.dst === "default" ? any : route.dst);
        }
      } catch {
        // Nothing readable: no routes.
      }
    }
    return dsts;
  }

  /** Steps on `dev` in one `ip -batch` (it stops at the first that fails). */
  apply(dev: string, steps: readonly LinkStep[], where: IpWhere = {}): Promise<RunResult> {
    return this.#runner.exec(["ip", "-batch", "-"], {
      ...whereOf(where),
      stdin: stepLines(dev, steps).join("\n") + "\n",
    });
  }

  /**
   * Moves a link into `netns`, renamed `ifname`, MTU set and without an IPv6
   * link-local address, in one netlink request. A name taken there fails
   * the rename after the move (the link is then in `netns` as it was).
   */
  moveLink(name: string, netns: string, ifname: string, mtu: number): Promise<RunResult> {
    return this.#runner.exec([
      "ip",
      "link",
      "set",
      name,
      "netns",
      netns,
      "name",
      ifname,
      "mtu",
      String(mtu),
      "addrgenmode",
      "none",
    ]);
  }

  /** Renames a link (MTU set, no link-local address). */
  renameLink(from: string, ifname: string, mtu: number, where: IpWhere = {}): Promise<RunResult> {
    return this.#runner.exec(
      ["ip", "link", "set", from, "name", ifname, "mtu", String(mtu), "addrgenmode", "none"],
      whereOf(where),
    );
  }

  deleteLink(name: string, where: IpWhere = {}): Promise<RunResult> {
    return this.#runner.exec(["ip", "link", "del", name], whereOf(where));
  }

  /** Brings a link up. */
  async up(name: string, where: IpWhere = {}): Promise<void> {
    await this.#runner.run(["ip", "link", "set", name, "up"], whereOf(where));
  }

  /** The device of the default route, if any. */
  async defaultRouteDev(): Promise<string | undefined> {
    const r = await this.#runner.exec(["ip", "-j", "route", "show", "default"]);
    if (r.code !== 0) return undefined;
    try {
      return (JSON.parse(r.stdout || "[]") as { dev?: string }[])[0]?.dev;
    } catch {
      return undefined;
    }
  }

  /** The MTU of a link, if it is there. */
  async mtuOf(dev: string): Promise<number | undefined> {
    const r = await this.#runner.exec(["ip", "-j", "link", "show", "dev", dev]);
    return r.code === 0 ? parseLinks(r.stdout)[0]?.mtu : undefined;
  }

  /** The source address the kernel would use toward `dst`, if it has a route. */
  async sourceToward(dst: string): Promise<string | undefined> {
    const fam = familyOf(dst) === 6 ? "-6" : "-4";
    const r = await this.#runner.exec(["ip", "-j", fam, "route", "get", dst]);
    if (r.code !== 0) return undefined;
    try {
      return (JSON.parse(r.stdout || "[]") as { prefsrc?: string }[])[0]?.prefsrc;
    } catch {
      return undefined;
    }
  }
}
