/** `wgcni node …`: the node manager. */
import { readFailure } from "../lib/fs.ts";
import { Command, InvalidArgumentError } from "@commander-js/extra-typings";
import { collect, intArg, logOptions, opt, withConfigFile, withLogFlags } from "./_config.ts";
import { parsePortRule, type PortRule } from "../lib/ip/nft.ts";
import { secretFrom } from "../lib/secrets.ts";
import { say } from "./_output.ts";
import { durationArg } from "./cluster.ts";
import { nameProblem } from "../lib/domain/names.ts";
import { isKey, isLowOrderKey } from "../lib/wireguard/keys.ts";

const DEFAULTS = {
  iface: "wgcni0",
  stateDir: "/run/wgcni",
  keyDir: "/var/lib/wgcni",
  socket: "/run/wgcni/wgcni.sock",
  confDir: "/etc/cni/net.d",
  binDir: "/opt/cni/bin",
};

/** `v4,v6` | `v4` | `v6` | `none` → families. */
export function parseMasquerade(value: string): (4 | 6)[] {
  if (value === "none") return [];
  const out: (4 | 6)[] = [];
  for (const part of value.split(",").map((s) => s.trim())) {
    if (part === "v4") out.push(4);
    else if (part === "v6") out.push(6);
    else throw new TypeError(`Cannot use --masquerade "${value}": expected v4,v6 | v4 | v6 | none`);
  }
  return out;
}

/** `--ingress-filter v6`, `4,6`, repeated: the families, each once. */
export function parseIngressFilter(values: readonly string[]): (4 | 6)[] {
  const out = new Set<4 | 6>();
  for (const v of values) {
    if (v === "v4" || v === "4") out.add(4);
    else if (v === "v6" || v === "6") out.add(6);
    else throw new TypeError(`Cannot use --ingress-filter "${v}": expected v4, v6 or both`);
  }
  return [...out].sort();
}

/** `--pod-open-port tcp/53 --pod-open-port udp/53,udp/5353`: the rules, parsed as they come. */
function podOpenPorts(value: string, previous: PortRule[] | undefined): PortRule[] {
  try {
    return [...(previous ?? []), ...collect(value, undefined).map(parsePortRule)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** Values of a list option as flags and env give them (parsed) or a config file does (text). */
function fromAnySource<T>(values: readonly unknown[] | undefined, parse: (v: string) => T[]): T[] {
  return (values ?? []).flatMap((v) => typeof v === "string" ? parse(v) : [v as T]);
}

/** `--ingress-filter v6 --ingress-filter 4`, or `v4,v6`. */
function ingressFamilies(value: string, previous: (4 | 6)[] | undefined): (4 | 6)[] {
  try {
    return parseIngressFilter([...(previous ?? []).map(String), ...collect(value, undefined)]);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

async function readCa(file: string | undefined): Promise<string | undefined> {
  if (file === undefined) return undefined;
  try {
    return await Deno.readTextFile(file);
  } catch (err) {
    const why = readFailure(err);
    throw new TypeError(`Cannot read --ca ${file}: ${why}`);
  }
}

export function nodeCommand() {
  const node = new Command("node").description(
    "the node manager: the node's WireGuard interface, peers, pod addresses, local API",
  );
  node.addCommand(
    withConfigFile(withLogFlags(
      new Command("join")
        .description("register with the cluster and keep this node's mesh in step")
        .argument("[url]", "cluster manager URL(s), comma-separated (or --cluster)")
        .addOption(
          opt("--cluster <urls>", "cluster manager URL(s), comma-separated (instead of [url])"),
        )
        .addOption(opt("--token <token>", "join token (better: --token-file)", "WGCNI_JOIN_TOKEN"))
        .addOption(
          opt("--token-file <file>", "file holding the join token", "WGCNI_JOIN_TOKEN_FILE"),
        )
        .addOption(opt("--name <name>", "node name (default: hostname)", "WGCNI_NODE_NAME"))
        .addOption(opt("--endpoint <ip[:port]>", "underlay address others reach this node at"))
        .addOption(opt("--interface <name>", "WireGuard interface").default(DEFAULTS.iface))
        .addOption(
          opt("--listen-port <port>", "WireGuard UDP port").argParser(
            intArg("--listen-port", 1, 65535),
          )
            .default(51820),
        )
        .addOption(
          opt("--state-dir <dir>", "allocation state (cleared by reboot)").default(
            DEFAULTS.stateDir,
          ),
        )
        .addOption(opt("--key-dir <dir>", "the node's private key").default(DEFAULTS.keyDir))
        .addOption(opt("--socket <path>", "local API socket").default(DEFAULTS.socket))
        .addOption(
          opt("--cni-conf-dir <dir>", "where the conflist is written").default(DEFAULTS.confDir),
        )
        .addOption(
          opt("--cni-bin-dir <dir>", "where the plugin is linked").default(DEFAULTS.binDir),
        )
        .addOption(opt("--masquerade <families>", "v4,v6 | v4 | v6 | none").default("v4,v6"))
        .addOption(
          opt(
            "--ingress-filter <families>",
            "v4 and/or v6: pods of these families accept from outside the cluster pools only " +
              "connections they started (for public pod addresses, masquerade off); repeatable",
          ).argParser(ingressFamilies),
        )
        .addOption(
          opt(
            "--pod-open-port <proto/port>",
            "a port pods may reach in the node's namespace (tcp|udp|sctp/PORT or PROTO/FIRST-LAST; " +
              "all others are closed to pods); repeatable",
          ).argParser(podOpenPorts),
        )
        .addOption(
          opt("--mtu <n>", "MTU of WireGuard interfaces").argParser(intArg("--mtu", 1280, 65535)),
        )
        .addOption(opt("--ca <file>", "CA certificate to verify the cluster API"))
        .addOption(
          opt(
            "--insecure",
            "allow plain HTTP to a manager that is not on loopback (sends the token in clear)",
          ),
        )
        .addOption(
          opt("--metrics-listen <addr:port>", "serve Prometheus metrics on /metrics there"),
        )
        .addOption(
          opt(
            "--pod-paths <mode>",
            "direct: pods that talk get a direct WireGuard path (one encryption); " +
              "hub: every pod packet goes through the nodes",
          ).choices(["direct", "hub"] as const).default("direct" as const),
        )
        .addOption(
          opt("--direct-idle <duration>", "remove a direct pod path idle this long")
            .argParser(durationArg).default(300_000, "5m"),
        )
        .addOption(
          opt(
            "--relay-retry <duration>",
            "behind NAT: how often a node pair going through the relay tries the direct path again",
          ).argParser(durationArg).default(300_000, "5m"),
        )
        .addOption(
          opt(
            "--key-lifetime <duration>",
            "rotate the node's key this long after it was made, and again each time (hitless)",
          ).argParser(durationArg),
        )
        .addOption(
          opt(
            "--key-switch-lead <duration>",
            "how far ahead of announcing a new key every node switches to it",
          ).argParser(durationArg).default(5_000, "5s"),
        )
        .action(async (url, o) => {
          // The argument wins over --cluster from the environment or a config file.
          const urls = url ?? o.cluster;
          if (urls === undefined || urls.trim() === "") {
            throw new TypeError(
              "Cannot join: give the cluster manager's URL (as the argument, --cluster or WGCNI_CLUSTER)",
            );
          }
          if (url !== undefined && o.cluster !== undefined) {
            throw new TypeError(
              "Cannot join: give the cluster URL once, as the argument or --cluster",
            );
          }
          const token = secretFrom("--token", o.token, o.tokenFile);
          const { join } = await import("../modes/node/join.ts");
          const { getLogger, setupLogging } = await import("../lib/log.ts");
          await setupLogging(logOptions(o));
          const name = (o.name ?? Deno.hostname()).toLowerCase();
          await join({
            urls: urls.split(",").map((s) => s.trim()).filter(Boolean),
            token,
            name,
            endpoint: o.endpoint,
            iface: o.interface,
            listenPort: Number(o.listenPort),
            stateDir: o.stateDir,
            keyDir: o.keyDir,
            socket: o.socket,
            cniConfDir: o.cniConfDir,
            cniBinDir: o.cniBinDir,
            masquerade: parseMasquerade(o.masquerade),
            ingressFilter: parseIngressFilter(
              fromAnySource(o.ingressFilter, (v) => collect(v, undefined)).map(String),
            ),
            podOpenPorts: fromAnySource(o.podOpenPort, (v) => podOpenPorts(v, undefined)),
            mtu: o.mtu === undefined ? undefined : Number(o.mtu),
            caCert: await readCa(o.ca),
            insecure: o.insecure === true,
            ...(o.metricsListen !== undefined ? { metricsListen: o.metricsListen } : {}),
            podPaths: o.podPaths,
            directIdleMs: Number(o.directIdle),
            relayRetryMs: Number(o.relayRetry),
            ...(o.keyLifetime !== undefined ? { keyLifetimeMs: Number(o.keyLifetime) } : {}),
            keySwitchLeadMs: Number(o.keySwitchLead),
          }, { logger: getLogger("node") });
        }),
    )),
  );
  node.addCommand(
    withConfigFile(
      new Command("leave")
        .description("deregister and remove the interface, rules, conflist and state")
        .addOption(opt("--interface <name>", "WireGuard interface").default(DEFAULTS.iface))
        .addOption(opt("--state-dir <dir>", "allocation state").default(DEFAULTS.stateDir))
        .addOption(opt("--key-dir <dir>", "the node's key and credential").default(DEFAULTS.keyDir))
        .addOption(opt("--socket <path>", "local API socket").default(DEFAULTS.socket))
        .addOption(
          opt("--cni-conf-dir <dir>", "where the conflist was written").default(DEFAULTS.confDir),
        )
        .addOption(opt("--ca <file>", "CA certificate to verify the cluster API"))
        .option("--force", "detach pods and workloads that are still attached")
        .action(async (o) => {
          const { leave } = await import("../modes/node/leave.ts");
          const { getLogger, setupLogging } = await import("../lib/log.ts");
          await setupLogging();
          await leave({
            iface: o.interface,
            stateDir: o.stateDir,
            keyDir: o.keyDir,
            socket: o.socket,
            cniConfDir: o.cniConfDir,
            force: o.force ?? false,
            caCert: await readCa(o.ca),
          }, { logger: getLogger("node"), print: say });
        }),
    ),
  );
  node.addCommand(
    new Command("attach")
      .description(
        "attach a workload that brings its own WireGuard interface (a VM, a process): " +
          "print the addresses and peer to configure it with",
      )
      .argument("<name>", "the workload's name on this node (the rules of node names)", nameArg)
      .addOption(
        opt(
          "--public-key <key>",
          "the workload's WireGuard public key (its private key stays with it)",
          "WGCNI_ATTACH_PUBLIC_KEY",
        ).argParser(publicKeyArg).makeOptionMandatory(),
      )
      .addOption(
        opt(
          "--endpoint-port <port>",
          "its UDP port on this node's loopback, when its socket is in the node's namespace " +
            "(the node then sends to 127.0.0.1:PORT); without it, it dials in",
          "WGCNI_ATTACH_ENDPOINT_PORT",
        ).argParser(intArg("--endpoint-port", 1, 65535)),
      )
      .addOption(
        opt("--format <format>", "wg-quick | json", "WGCNI_ATTACH_FORMAT")
          .choices(["wg-quick", "json"]).default("wg-quick"),
      )
      .addOption(
        opt(
          "--allowed-ips <which>",
          "default: everything through the node (0.0.0.0/0, ::/0); cluster: the cluster's pools",
          "WGCNI_ATTACH_ALLOWED_IPS",
        ).choices(["default", "cluster"]).default("default"),
      )
      .addOption(opt("--socket <path>", "local API socket").default(DEFAULTS.socket))
      .action(async (name, o) => {
        const { attach, renderWorkloadWgQuick } = await import("../modes/node/attach.ts");
        const w = await attach({
          socket: o.socket,
          name,
          publicKey: o.publicKey,
          ...(o.endpointPort !== undefined ? { endpointPort: Number(o.endpointPort) } : {}),
          format: o.format as "wg-quick" | "json",
          allowedIps: o.allowedIps as "default" | "cluster",
        });
        say(o.format === "json" ? JSON.stringify(w, null, 2) : renderWorkloadWgQuick(w).trimEnd());
      }),
  );
  node.addCommand(
    new Command("detach")
      .description("detach a workload attached with `wgcni node attach`: its peer and addresses go")
      .argument("<name>", "the workload's name on this node", nameArg)
      .addOption(opt("--socket <path>", "local API socket").default(DEFAULTS.socket))
      .action(async (name, o) => {
        const { detach } = await import("../modes/node/attach.ts");
        const r = await detach({ socket: o.socket, name });
        say(r.released ? `detached ${name}` : `${name} was not attached to this node`);
      }),
  );
  node.addCommand(
    new Command("rotate-key")
      .description(
        "rotate this node's WireGuard key without dropping a flow: every node switches to the " +
          "new key at one moment a few seconds ahead; the old key is gone everywhere afterwards",
      )
      .addOption(
        opt("--lead <duration>", "how far ahead every node switches (default: the node's)")
          .argParser(durationArg),
      )
      .option("--pods", "then give every pod of this node a new key too (hitless as well)")
      .addOption(opt("--socket <path>", "local API socket").default(DEFAULTS.socket))
      .action(async (o) => {
        const { rotateKey } = await import("../modes/node/attach.ts");
        const r = await rotateKey({
          socket: o.socket,
          ...(o.lead !== undefined ? { leadMs: Number(o.lead) } : {}),
          ...(o.pods ? { pods: true } : {}),
        });
        say(
          `node key rotated: ${r.from} -> ${r.to} (switched at ${
            new Date(r.switchAt).toISOString()
          }; ${r.pods} pods moved)`,
        );
        if (r.podKeys !== undefined) say(`${r.podKeys} pods got a new key of their own`);
        if (r.workloads > 0) {
          say(
            `${r.workloads} workloads with their own interface hold the old key: run \`wgcni node attach\` for each again`,
          );
        }
      }),
  );
  return node;
}

/** A workload name: the rules of node names. */
function nameArg(value: string): string {
  const problem = nameProblem(value);
  if (problem !== undefined) {
    throw new InvalidArgumentError(`Cannot use workload name "${value}": ${problem}`);
  }
  return value;
}

/** A WireGuard public key that is a key (not a low-order point). */
function publicKeyArg(value: string): string {
  if (!isKey(value.trim())) {
    throw new InvalidArgumentError(
      "Cannot use --public-key: expected a WireGuard public key (base64 of 32 bytes, 44 characters)",
    );
  }
  if (isLowOrderKey(value.trim())) {
    throw new InvalidArgumentError(
      "Cannot use --public-key: it is a low-order Curve25519 point, so no key",
    );
  }
  return value.trim();
}
