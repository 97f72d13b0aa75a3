/**
 * wgcni's own nftables table on a node: masquerade of pod traffic leaving
 * the cluster pools, the filter that keeps pods away from the node's own
 * services, and the optional ingress filter for pods with public addresses.
 */

/** The table wgcni owns; nothing else is touched. */
export const NFT_TABLE = "wgcni";

/** A port or port range pods may reach in the node's namespace. */
export interface PortRule {
  readonly proto: "tcp" | "udp" | "sctp";
  readonly from: number;
  /** The last port of the range (`from` for one port). */
  readonly to: number;
}

/** Per address family: what the rules need of one family. */
export interface FamilyRules {
  /** Every cluster pool (pods and external clients): "inside the cluster". */
  readonly pools: readonly string[];
  /** The pod pools: sources kept from the node's own services. */
  readonly podPools: readonly string[];
  /** This node's own addresses on the node interface (its gateways). */
  readonly gateways: readonly string[];
  /** This node's own subnets: the sources of its pods. */
  readonly subnets?: readonly string[];
  /**
   * The host part of a node subnet as an address (`0.0.0.255` for /24): a
   * node's own address in its subnet is host 1, never a pod's. Absent
   * when this node has no subnet of the family.
   */
  readonly hostMask?: string;
  readonly masquerade: boolean;
  readonly ingressFilter: boolean;
}

/** Everything the node's ruleset is made of. */
export interface NodeRulesetOptions {
  readonly iface: string;
  readonly v4: FamilyRules;
  readonly v6: FamilyRules;
  readonly podOpenPorts: readonly PortRule[];
  /**
   * Direct pod paths: the pod → pod flows this node forwards are recorded
   * in the sets {@linkcode FLOW_SETS} (their elements expire), the pod
   * directory's TCP port on the gateways is reachable only through the
   * node interface, and the direct sockets of pods (set `direct_ports`)
   * accept only from loopback and the nodes' underlay addresses (sets
   * `nodes4`, `nodes6`).
   */
  readonly direct?: {
    readonly directoryPort: number;
    /** Whether flows are recorded (off with `--pod-paths hub`: the guards stay). */
    readonly flows: boolean;
    readonly flowTimeoutS: number;
    /** Elements carried over from the table being replaced (a restart keeps direct paths up). */
    readonly keep?: DirectElements;
  };
}

/** The elements of the direct-path guard sets. */
export interface DirectElements {
  readonly ports: readonly number[];
  readonly nodes4: readonly string[];
  readonly nodes6: readonly string[];
}

/** The sets the node's forwarded pod → pod flows land in, per family. */
export const FLOW_SETS = { 4: "pod_flows4", 6: "pod_flows6" } as const;

/** The set of UDP ports pods' direct interfaces listen on. */
export const DIRECT_PORTS_SET = "direct_ports";

/** The sets of the nodes' underlay addresses, per family. */
export const NODE_SETS = { 4: "nodes4", 6: "nodes6" } as const;

/** `tcp/53`, `udp/30000-32767` as a flag takes it. */
export function formatPortRule(r: PortRule): string {
  return `${r.proto}/${r.from === r.to ? r.from : `${r.from}-${r.to}`}`;
}

/** Parses `PROTO/PORT` or `PROTO/FIRST-LAST` (tcp, udp, sctp). */
export function parsePortRule(text: string): PortRule {
  const m = text.trim().toLowerCase().match(/^(tcp|udp|sctp)\/(\d{1,5})(?:-(\d{1,5}))?$/);
  const from = Number(m?.[2]);
  const to = m?.[3] === undefined ? from : Number(m[3]);
  if (!m || from < 1 || to > 65535 || to < from) {
    throw new TypeError(
      `Cannot use pod open port "${text}": expected tcp|udp|sctp/PORT or PROTO/FIRST-LAST, ports 1-65535`,
    );
  }
  return { proto: m[1] as PortRule["proto"], from, to };
}

const set = (items: readonly string[]) => `{ ${items.join(", ")} }`;

/**
 * The ruleset (for `nft -f -`) that replaces wgcni's table atomically:
 *
 * - postrouting: traffic from a pool to outside every pool, not leaving
 *   through the mesh interface, is masqueraded, per family switched on;
 * - input: packets from pod addresses to the node's own namespace are
 *   dropped, except replies to what the node started, ICMP echo to its
 *   gateways, the ports the operator opened, and other nodes (their own
 *   address in their subnet, host 1, arriving through the mesh: a pod can
 *   send only from its own /32 and /128);
 * - forward, per family with the ingress filter: connections from outside
 *   the cluster pools to pod addresses are dropped unless the pod started
 *   them (conntrack);
 * - with direct pod paths: the flows and guards of {@linkcode NodeRulesetOptions.direct}.
 */
export function nodeRuleset(o: NodeRulesetOptions): string {
  const fams = [["ip", "icmp", o.v4], ["ip6", "icmpv6", o.v6]] as const;
  const masquerade: string[] = [];
  const toPods: string[] = [];
  const fromPods: string[] = [];
  const ingress: string[] = [];
  const flows: string[] = [];
  const guards: string[] = [];
  const sets: string[] = [];
  const d = o.direct;
  if (d !== undefined) {
    const elements = (items: readonly (string | number)[] = []) =>
      items.length ? ` elements = ${set(items.map(String))};` : "";
    sets.push(
      `  set ${DIRECT_PORTS_SET} { type inet_service;${elements(d.keep?.ports)} }`,
      `  set ${NODE_SETS[4]} { type ipv4_addr;${elements(d.keep?.nodes4)} }`,
      `  set ${NODE_SETS[6]} { type ipv6_addr;${elements(d.keep?.nodes6)} }`,
    );
    guards.push(
      `    udp dport @${DIRECT_PORTS_SET} iifname != "lo" ip saddr != @${
        NODE_SETS[4]
      } counter drop`,
      `    udp dport @${DIRECT_PORTS_SET} iifname != "lo" ip6 saddr != @${
        NODE_SETS[6]
      } counter drop`,
    );
  }
  for (const [ip, icmp, f] of fams) {
    if (d !== undefined) {
      const fam = ip === "ip" ? 4 : 6;
      sets.push(
        `  set ${FLOW_SETS[fam]} { type ${
          fam === 4 ? "ipv4_addr . ipv4_addr" : "ipv6_addr . ipv6_addr"
        }; flags dynamic,timeout; timeout ${d.flowTimeoutS}s; size 65536; }`,
      );
      if (d.flows && f.subnets?.length && f.podPools.length) {
        flows.push(
          `    iifname "${o.iface}" oifname "${o.iface}" ${ip} saddr ${
            set(f.subnets)
          } ${ip} daddr ${set(f.podPools)} update @${FLOW_SETS[fam]} { ${ip} saddr . ${ip} daddr }`,
        );
      }
      if (f.gateways.length) {
        guards.push(
          `    ${ip} daddr ${
            set(f.gateways)
          } tcp dport ${d.directoryPort} iifname != "${o.iface}" counter drop`,
        );
      }
    }
    if (f.masquerade && f.pools.length) {
      masquerade.push(
        `    oifname != "${o.iface}" ${ip} saddr ${set(f.pools)} ${ip} daddr != ${
          set(f.pools)
        } masquerade`,
      );
    }
    if (f.podPools.length) {
      toPods.push(`    ${ip} saddr ${set(f.podPools)} jump from_pods`);
      if (f.hostMask !== undefined) {
        fromPods.push(
          `    iifname "${o.iface}" ${ip} saddr & ${f.hostMask} == ${
            ip === "ip" ? "0.0.0.1" : "::1"
          } accept`,
        );
      }
      if (f.gateways.length) {
        fromPods.push(`    ${ip} daddr ${set(f.gateways)} ${icmp} type echo-request accept`);
      }
    }
    if (f.ingressFilter && f.podPools.length) {
      ingress.push(
        `    ${ip} daddr ${set(f.podPools)} ${ip} saddr != ${
          set(f.pools)
        } ct state != { established, related } counter drop`,
      );
    }
  }
  for (const proto of ["tcp", "udp", "sctp"] as const) {
    const ports = o.podOpenPorts.filter((p) => p.proto === proto).map((p) =>
      p.from === p.to ? String(p.from) : `${p.from}-${p.to}`
    );
    if (ports.length) fromPods.push(`    ${proto} dport ${set(ports)} accept`);
  }
  const lines = [
    `table inet ${NFT_TABLE} {}`,
    `delete table inet ${NFT_TABLE}`,
    `table inet ${NFT_TABLE} {`,
    ...sets,
    "  chain postrouting {",
    "    type nat hook postrouting priority srcnat; policy accept;",
    ...masquerade,
    "  }",
    "  chain input {",
    "    type filter hook input priority filter; policy accept;",
    ...guards,
    ...toPods,
    "  }",
    // Pods and clients all sit behind the one WireGuard interface: traffic
    // between them goes in and out of it, and a redirect ("reach it
    // directly") would only mislead them.
    "  chain output {",
    "    type filter hook output priority filter; policy accept;",
    `    oifname "${o.iface}" icmp type redirect counter drop`,
    `    oifname "${o.iface}" icmpv6 type nd-redirect counter drop`,
    "  }",
    "  chain from_pods {",
    "    ct state established,related accept",
    // The node talking to itself through its own addresses.
    '    iifname "lo" accept',
    ...fromPods,
    "    counter drop",
    "  }",
  ];
  if (ingress.length || flows.length) {
    lines.push(
      "  chain forward {",
      "    type filter hook forward priority filter; policy accept;",
      ...flows,
      ...ingress,
      "  }",
    );
  }
  lines.push("}", "");
  return lines.join("\n");
}

/** One element of a set as `nft -j list set` shows it. */
export interface SetEntry {
  readonly value: string | number | (string | number)[];
  /** Seconds, in sets with timeouts: the element's lifetime and what is left of it. */
  readonly timeout?: number;
  readonly expires?: number;
}

/** The elements of a set in `nft -j list set` output (addresses, ports, or concatenations of them). */
export function setEntries(json: string): SetEntry[] {
  const out: SetEntry[] = [];
  const doc = JSON.parse(json) as {
    nftables?: { set?: { elem?: unknown[]; timeout?: number } }[];
  };
  for (const item of doc.nftables ?? []) {
    for (const e of item.set?.elem ?? []) {
      // Plain values, or `{ elem: { val, timeout, expires } }` in sets with timeouts.
      const timed = (e as { elem?: { val?: unknown; timeout?: number; expires?: number } }).elem;
      const val = timed?.val ?? e;
      const value = typeof val === "string" || typeof val === "number"
        ? val
        : (val as { concat?: (string | number)[] } | null)?.concat;
      if (value === undefined) continue;
      // An element of the set's own timeout is listed without one.
      const timeout = timed?.timeout ?? item.set?.timeout;
      out.push({
        value,
        ...(timeout !== undefined ? { timeout } : {}),
        ...(timed?.expires !== undefined ? { expires: timed.expires } : {}),
      });
    }
  }
  return out;
}

/** The elements' values alone (see {@linkcode setEntries}). */
export function setElements(json: string): SetEntry["value"][] {
  return setEntries(json).map((e) => e.value);
}

/** Removes wgcni's table (for `nft -f -`), whether or not it exists. */
export function removeRuleset(): string {
  return `table inet ${NFT_TABLE} {}\ndelete table inet ${NFT_TABLE}\n`;
}
