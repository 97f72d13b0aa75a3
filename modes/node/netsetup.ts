/**
 * The node interface and what surrounds it in the node's own namespace:
 * adopt or create the WireGuard interface, its addresses, the routes of the
 * cluster pools, forwarding and wgcni's nftables table. Idempotent.
 */
import type { Runner } from "../../lib/ip/runner.ts";
import { Ip, type LinkStep, parseLinks } from "../../lib/ip/link.ts";
import {
  DIRECT_PORTS_SET,
  type DirectElements,
  type FamilyRules,
  NFT_TABLE,
  NODE_SETS,
  nodeRuleset,
  type PortRule,
  removeRuleset,
  setElements,
} from "../../lib/ip/nft.ts";
import type { Logger } from "../../lib/log.ts";
import type { Backend, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { bitsOf, firstHost, formatAddress, parseCidr } from "../../lib/ipam/mod.ts";

export interface NodeNetOptions {
  readonly runner: Runner;
  readonly wg: WireGuardControl;
  readonly logger: Logger;
  readonly iface: string;
  readonly privateKey: string;
  readonly publicKey: string;
  readonly listenPort: number;
  readonly mtu: number;
  readonly subnets: readonly string[];
  readonly podCidrs: readonly string[];
  readonly clientCidrs: readonly string[];
  readonly masquerade: readonly (4 | 6)[];
  /** Families whose pods admit only connections they started from outside the pools. */
  readonly ingressFilter: readonly (4 | 6)[];
  /** Ports pods may reach in the node's namespace (all others are closed to them). */
  readonly podOpenPorts: readonly PortRule[];
  /** The direct-path flows and guards (see `NodeRulesetOptions.direct`). */
  readonly direct?: {
    readonly directoryPort: number;
    readonly flows: boolean;
    readonly flowTimeoutS: number;
  };
}

/** The node's nftables rules of one family. */
export function familyRules(o: NodeNetOptions, family: 4 | 6): FamilyRules {
  const of = (cidrs: readonly string[]) => cidrs.filter((c) => parseCidr(c).family === family);
  const own = of(o.subnets);
  const mine = own[0] === undefined ? undefined : parseCidr(own[0]);
  return {
    pools: of([...o.podCidrs, ...o.clientCidrs]),
    podPools: of(o.podCidrs),
    gateways: own.map(gatewayOf),
    subnets: own,
    ...(mine === undefined
      ? {}
      : { hostMask: formatAddress(family, (1n << BigInt(bitsOf(family) - mine.prefix)) - 1n) }),
    masquerade: o.masquerade.includes(family),
    ingressFilter: o.ingressFilter.includes(family),
  };
}

/** The node's address on its interface in each subnet: the first host. */
export function gatewayOf(subnet: string): string {
  const c = parseCidr(subnet);
  return formatAddress(c.family, firstHost(c));
}

/** Brings the node interface to the wanted state; returns the backend and whether it was adopted. */
export async function setupNodeNetwork(
  o: NodeNetOptions,
): Promise<{ backend: Backend; adopted: boolean }> {
  const { runner, wg, iface } = o;
  const ip = new Ip(runner);
  await ip.up("lo");
  let adopted = false;
  let backend: Backend;
  if (await wg.exists(iface)) {
    const state = await wg.show(iface);
    if (state.publicKey !== o.publicKey) {
      throw new Error(
        `Cannot adopt ${iface}: it exists with another key; remove it (ip link del ${iface}) or choose --interface`,
      );
    }
    adopted = true;
    backend = backendOfKind(await ip.kindOf(iface));
    // Pods follow the node interface's backend; nothing is probed again.
    wg.assume(backend);
    o.logger.info("adopted existing interface {iface} ({backend})", { iface, backend });
  } else {
    backend = await wg.create(iface, { mtu: o.mtu });
    await wg.configure(iface, { privateKey: o.privateKey, listenPort: o.listenPort });
    o.logger.info("created interface {iface} ({backend})", { iface, backend });
  }
  if (backend === "userspace") {
    // Every wireguard-go (one per pod) watches its control socket with an
    // inotify instance; the common default of 128 would cap a node at ~127 pods.
    await raiseSysctl(
      runner,
      o.logger,
      "fs.inotify.max_user_instances",
      USERSPACE_INOTIFY_INSTANCES,
    );
  }
  const steps: LinkStep[] = [
    ...o.subnets.map((s) => ({
      op: "address" as const,
      cidr: `${gatewayOf(s)}/${parseCidr(s).prefix}`,
      replace: true,
    })),
    { op: "up", mtu: o.mtu },
    ...[...o.podCidrs, ...o.clientCidrs].map((dst) => ({
      op: "route" as const,
      dst,
      replace: true,
    })),
  ];
  const set = await ip.apply(iface, steps);
  if (set.code !== 0) {
    throw new Error(`Cannot set up ${iface}: ip answered ${set.stderr.trim()}`);
  }
  await runner.run([
    "sysctl",
    "-q",
    "-w",
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
  ]);
  const direct = o.direct && { ...o.direct, keep: await directElements(runner) };
  await runner.run(["nft", "-f", "-"], {
    stdin: nodeRuleset({
      iface,
      v4: familyRules(o, 4),
      v6: familyRules(o, 6),
      podOpenPorts: o.podOpenPorts,
      ...(direct ? { direct } : {}),
    }),
  });
  return { backend, adopted };
}

/**
 * The backend of an existing WireGuard interface from its link kind: a
 * kernel one is of kind `wireguard`, wireguard-go's a TUN (by its kind, not
 * its name, which may well contain "wireguard").
 */
export function backendOfKind(kind: string | undefined): Backend {
  return kind === "wireguard" ? "kernel" : "userspace";
}

/** {@linkcode backendOfKind} of `ip -d -j link show` output. */
export function backendOfLink(json: string): Backend {
  return backendOfKind(parseLinks(json)[0]?.kind);
}

/** inotify instances a node on wireguard-go needs: one per pod interface, and headroom. */
export const USERSPACE_INOTIFY_INSTANCES = 8192;

/** Raises a numeric sysctl to at least `min`; never lowers it. */
export async function raiseSysctl(
  runner: Runner,
  logger: Logger,
  key: string,
  min: number,
): Promise<void> {
  const now = Number((await runner.run(["sysctl", "-n", key])).trim());
  if (Number.isFinite(now) && now >= min) return;
  await runner.run(["sysctl", "-q", "-w", `${key}=${min}`]);
  logger.info("raised {key} from {from} to {to}", { key, from: now, to: min });
}

/** The direct-path guard sets' elements in wgcni's table as it is (none when there is no table). */
async function directElements(runner: Runner): Promise<DirectElements> {
  const read = async (name: string) => {
    const r = await runner.exec(["nft", "-j", "list", "set", "inet", NFT_TABLE, name]);
    return r.code === 0 ? setElements(r.stdout) : [];
  };
  const [ports, nodes4, nodes6] = await Promise.all([
    read(DIRECT_PORTS_SET),
    read(NODE_SETS[4]),
    read(NODE_SETS[6]),
  ]);
  return {
    ports: ports.filter((p): p is number => typeof p === "number"),
    nodes4: nodes4.filter((a): a is string => typeof a === "string"),
    nodes6: nodes6.filter((a): a is string => typeof a === "string"),
  };
}

/** Removes the node interface and wgcni's table. */
export async function teardownNodeNetwork(
  o: { runner: Runner; wg: WireGuardControl; iface: string },
): Promise<void> {
  await o.wg.delete(o.iface);
  await o.runner.run(["nft", "-f", "-"], { stdin: removeRuleset() });
}

/** The WireGuard MTU over an underlay link of `linkMtu`: 80 less (an IPv6 underlay's overhead), or 1420. */
export function mtuFor(linkMtu: number | undefined): number {
  return linkMtu ? Math.max(1280, linkMtu - 80) : 1420;
}

/** The MTU of the default route's link (the node's underlay), if there is one. */
export async function defaultLinkMtu(runner: Runner): Promise<number | undefined> {
  const ip = new Ip(runner);
  const dev = await ip.defaultRouteDev();
  return dev ? await ip.mtuOf(dev) : undefined;
}

/** The address of the default route's interface (the node's underlay endpoint). */
export async function defaultEndpointAddress(runner: Runner): Promise<string | undefined> {
  const ip = new Ip(runner);
  // Toward documentation addresses: only the route is asked for, nothing is sent.
  return await ip.sourceToward("192.0.2.255") ?? await ip.sourceToward("2001:db8::ff");
}
