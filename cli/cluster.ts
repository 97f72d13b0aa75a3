/** `wgcni cluster …`: the cluster manager and its admin commands. */
import { Command, InvalidArgumentError, type OptionValues } from "@commander-js/extra-typings";
import { collect, intArg, logOptions, opt, withConfigFile, withLogFlags } from "./_config.ts";
import { secretFrom } from "../lib/secrets.ts";
import { say } from "./_output.ts";
import { formatDuration, parseDuration } from "../modes/cluster/duration.ts";
import { adminClient, when } from "../modes/cluster/admin.ts";
import { listCommand, onOneCommand, removeCommand, withApiFlags } from "./_admin.ts";

/** A commander parser for durations (`24h`, `30m`, `7d`). */
export function durationArg(value: string): number {
  try {
    return parseDuration(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** Adds the flags of the etcd store (TLS, auth, prefix). */
// deno-lint-ignore no-explicit-any
function withEtcdFlags<A extends any[], O extends OptionValues>(cmd: Command<A, O>) {
  return cmd
    .addOption(opt("--etcd-prefix <prefix>", "etcd key prefix of this cluster").default("/wgcni/"))
    .addOption(opt("--etcd-ca <file>", "CA of the etcd members (with etcds://)"))
    .addOption(opt("--etcd-cert <file>", "client certificate for etcd"))
    .addOption(opt("--etcd-key <file>", "key of the etcd client certificate"))
    .addOption(opt("--etcd-user <name>", "etcd user (password auth)"))
    .addOption(opt("--etcd-password <password>", "etcd password (better: WGCNI_ETCD_PASSWORD)"));
}

export function clusterCommand() {
  const cluster = new Command("cluster").description(
    "the cluster manager: node subnets, public keys, peer lists, join tokens",
  );
  cluster.addCommand(
    withConfigFile(
      withLogFlags(withEtcdFlags(
        new Command("serve")
          .description("serve the cluster API")
          .addOption(
            opt("--listen <addr:port>", "address and port to listen on").default("127.0.0.1:7443"),
          )
          .addOption(
            opt("--data-dir <dir>", "directory of the embedded store and tokens").default(
              "/var/lib/wgcni/cluster",
            ),
          )
          .addOption(
            opt("--pod-cidr <cidr...>", "cluster pod pool, one per family").argParser(collect),
          )
          .addOption(
            opt("--client-cidr <cidr...>", "external client pool, one per family").argParser(
              collect,
            ),
          )
          .addOption(
            opt("--node-mask-v4 <n>", "prefix length of a node's IPv4 subnet").argParser(
              intArg("--node-mask-v4", 1, 32),
            ).default(24),
          )
          .addOption(
            opt("--node-mask-v6 <n>", "prefix length of a node's IPv6 subnet").argParser(
              intArg("--node-mask-v6", 1, 128),
            ).default(64),
          )
          .addOption(
            opt(
              "--store <url>",
              "etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS) for several replicas (default: SQLite in --data-dir)",
            ),
          )
          .addOption(
            opt(
              "--join-token <token>",
              "join token (generated on first start when absent; better: --join-token-file)",
            ),
          )
          .addOption(opt("--join-token-file <file>", "file holding the join token"))
          .addOption(
            opt(
              "--admin-token <token>",
              "admin token (generated on first start when absent; better: --admin-token-file)",
            ),
          )
          .addOption(opt("--admin-token-file <file>", "file holding the admin token"))
          .addOption(opt("--tls-cert <file>", "TLS certificate (PEM)"))
          .addOption(opt("--tls-key <file>", "TLS private key (PEM)"))
          .addOption(opt("--insecure", "allow plain HTTP on a non-loopback address"))
          .addOption(
            opt(
              "--restored",
              "the embedded store was put back from a backup on purpose: serve it although it is behind the revision this manager served (nodes resync)",
            ),
          )
          .addOption(
            opt("--node-lease <duration>", "remove a node not heard from for this long")
              .argParser(durationArg).default(7 * 86_400_000, "7d"),
          )
          .addOption(
            opt(
              "--subnet-grace <duration>",
              "wait this long before reusing a removed node's subnets",
            )
              .argParser(durationArg).default(86_400_000, "1d"),
          )
          .addOption(
            opt("--keepalive <duration>", "keep-alive interval of watch streams")
              .argParser(durationArg).default(15_000, "15s"),
          )
          .addOption(
            opt(
              "--max-connections <n>",
              "open connections at most (default 16384, or the open-file limit less 256)",
            ).argParser(intArg("--max-connections", 1, 1_000_000)),
          )
          .addOption(
            opt("--max-connections-per-source <n>", "open connections from one address at most")
              .argParser(intArg("--max-connections-per-source", 1, 1_000_000)).default(1024),
          )
          .addOption(
            opt(
              "--relay-listen <addr:port>",
              "relay WireGuard packets (still encrypted) between nodes that cannot reach each other, at this address on ports from PORT",
            ),
          )
          .addOption(
            opt("--relay-ports <n>", "ports the relay uses from its first, two per relayed pair")
              .argParser(intArg("--relay-ports", 2, 65535)).default(256),
          )
          .addOption(
            opt(
              "--max-watches-per-credential <n>",
              "watch streams one credential may hold; one more closes its oldest",
            ).argParser(intArg("--max-watches-per-credential", 1, 1_000_000)).default(4),
          ),
      ))
        .action(async (o) => {
          let etcd;
          if (o.store !== undefined && o.store !== "sqlite") {
            const { etcdConnection } = await import("../modes/cluster/etcd_config.ts");
            etcd = etcdConnection(o.store, o);
          }
          if (o.podCidr === undefined || o.podCidr.length === 0) {
            throw new TypeError("Cannot serve: give the pod pool(s) with --pod-cidr");
          }
          const joinToken = secretFrom("--join-token", o.joinToken, o.joinTokenFile);
          const adminToken = secretFrom("--admin-token", o.adminToken, o.adminTokenFile);
          const { setupLogging, getLogger } = await import("../lib/log.ts");
          const { serve } = await import("../modes/cluster/serve.ts");
          await setupLogging(logOptions(o));
          await serve({
            listen: o.listen,
            dataDir: o.dataDir,
            ...(etcd !== undefined ? { etcd } : {}),
            podCidrs: o.podCidr,
            clientCidrs: o.clientCidr ?? [],
            nodeMaskV4: Number(o.nodeMaskV4),
            nodeMaskV6: Number(o.nodeMaskV6),
            ...(joinToken !== undefined ? { joinToken } : {}),
            ...(adminToken !== undefined ? { adminToken } : {}),
            ...(o.tlsCert !== undefined ? { tlsCert: o.tlsCert } : {}),
            ...(o.tlsKey !== undefined ? { tlsKey: o.tlsKey } : {}),
            insecure: o.insecure === true,
            restored: o.restored === true,
            leaseMs: Number(o.nodeLease),
            graceMs: Number(o.subnetGrace),
            keepAliveMs: Number(o.keepalive),
            limits: {
              ...(o.maxConnections !== undefined
                ? { maxConnections: Number(o.maxConnections) }
                : {}),
              maxConnectionsPerSource: Number(o.maxConnectionsPerSource),
            },
            maxWatchesPerCredential: Number(o.maxWatchesPerCredential),
            ...(o.relayListen !== undefined
              ? { relayListen: o.relayListen, relayPorts: Number(o.relayPorts) }
              : {}),
          }, { logger: getLogger("cluster"), print: say });
        }),
    ),
  );

  cluster.addCommand(
    withEtcdFlags(
      new Command("migrate")
        .description("copy the embedded store of a data directory into an empty etcd prefix")
        .addOption(
          opt("--from <dir>", "data directory of the embedded store", "WGCNI_MIGRATE_FROM"),
        )
        .addOption(
          opt(
            "--to <url>",
            "etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS)",
            "WGCNI_MIGRATE_TO",
          ),
        ),
    ).action(async (o) => {
      if (o.from === undefined || o.to === undefined) {
        throw new TypeError(
          "Cannot migrate: give the source with --from DIR and the target with --to etcd://…",
        );
      }
      const { etcdConnection } = await import("../modes/cluster/etcd_config.ts");
      const target = etcdConnection(o.to, o);
      const { setupLogging, getLogger } = await import("../lib/log.ts");
      const { migrate } = await import("../modes/cluster/migrate.ts");
      await setupLogging();
      const m = await migrate(o.from, target, getLogger("cluster"));
      say(
        `migrated ${m.nodes} nodes, ${m.clients} clients, ${m.tokens} tokens and ${m.quarantined} subnets in their grace period (${m.keys} keys) into ${target.prefix} on ${
          target.endpoints.join(",")
        }`,
      );
    }),
  );

  const token = new Command("token").description("join tokens");
  token.addCommand(
    withApiFlags(
      new Command("create")
        .description("create a join token and print it (shown once)")
        .addOption(opt("--ttl <duration>", "lifetime, e.g. 24h, 30m").argParser(durationArg))
        .addOption(opt("--single-use", "valid for one registration"))
        .option("--json", "print as JSON"),
    ).action(async (o) => {
      using api = await adminClient(o);
      const t = await api.createToken({
        ...(o.ttl !== undefined ? { ttlSeconds: Math.ceil(o.ttl / 1000) } : {}),
        ...(o.singleUse ? { singleUse: true } : {}),
      });
      if (o.json) say(JSON.stringify(t));
      else {
        say(t.token);
      }
    }),
  );
  token.addCommand(
    listCommand("list join tokens", (api) => api.tokens(), {
      headers: ["ID", "EXPIRES", "SINGLE-USE", "USED", "CREATED"],
      row: (t, now) => [
        t.id,
        t.expiresAt === null
          ? "never"
          : t.expiresAt <= now
          ? `expired ${when(t.expiresAt)}`
          : `${when(t.expiresAt)} (in ${
            formatDuration(Math.round((t.expiresAt - now) / 1000) * 1000)
          })`,
        t.singleUse ? "yes" : "no",
        t.used ? "yes" : "no",
        when(t.createdAt),
      ],
    }),
  );
  token.addCommand(onOneCommand({
    name: "revoke",
    description: "revoke a join token",
    argument: ["<id>", "token id"],
    act: (api, id) => api.revokeToken(id),
    done: (id) => `revoked join token ${id}`,
  }));
  cluster.addCommand(token);

  const node = new Command("node").description("registered nodes (admin)");
  // A node renews its lease every 30 s: three missed renewals and it is silent.
  const online = (n: { lastSeenAt: number }, now: number) => now - n.lastSeenAt <= 100_000;
  node.addCommand(
    listCommand("list registered nodes", (api) => api.nodes(), {
      headers: ["NAME", "STATE", "READY", "PODS", "ENDPOINT", "SUBNETS", "LAST SEEN", "PUBLIC KEY"],
      row: (n, now) => [
        n.name,
        online(n, now)
          ? "online"
          : `silent for ${formatDuration(Math.round((now - n.lastSeenAt) / 1000) * 1000)}`,
        n.ready === undefined ? "-" : n.ready ? "yes" : "no",
        n.pods === undefined ? "-" : String(n.pods),
        n.endpoint,
        n.subnets.join(","),
        when(n.lastSeenAt),
        n.publicKey,
      ],
      json: (n, now) => ({ ...n, online: online(n, now) }),
    }),
  );
  node.addCommand(removeCommand("node", {
    description: "remove a node; its subnets are reused after the grace period",
    remove: (api, name) => api.removeNode(name),
  }));
  node.addCommand(onOneCommand({
    name: "reset",
    description:
      "revoke a node's credential so it may register again with a join token (for a node that lost its credential; its subnets stay)",
    argument: ["<name>", "node name"],
    act: (api, name) => api.resetNode(name),
    done: (name) =>
      `reset node ${name}: its old credential no longer works; it may register once with a join token`,
  }));
  cluster.addCommand(node);
  return cluster;
}
