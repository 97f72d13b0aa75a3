/** `wgcni cluster …`: the cluster manager. */
import { Command } from "@commander-js/extra-typings";
import { collect, intArg, opt, withConfigFile } from "./_config.ts";
import { notYet } from "./_output.ts";

export function clusterCommand() {
  const cluster = new Command("cluster").description(
    "the cluster manager: node subnets, public keys, peer lists, join tokens",
  );
  cluster.addCommand(
    withConfigFile(
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
          opt("--client-cidr <cidr...>", "external client pool, one per family").argParser(collect),
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
            "etcd://HOST:PORT[,HOST:PORT...] for several replicas (default: SQLite in --data-dir)",
          ),
        )
        .addOption(opt("--join-token <token>", "join token (generated on first start when absent)"))
        .addOption(
          opt("--admin-token <token>", "admin token (generated on first start when absent)"),
        )
        .addOption(opt("--tls-cert <file>", "TLS certificate (PEM)"))
        .addOption(opt("--tls-key <file>", "TLS private key (PEM)"))
        .addOption(opt("--insecure", "allow plain HTTP on a non-loopback address"))
        .action(() => notYet("wgcni cluster serve")),
    ),
  );
  const token = new Command("token").description("join tokens");
  token.addCommand(
    new Command("create")
      .description("create a join token")
      .addOption(opt("--ttl <duration>", "lifetime, e.g. 24h, 30m"))
      .addOption(opt("--single-use", "valid for one registration"))
      .action(() => notYet("wgcni cluster token create")),
  );
  cluster.addCommand(token);
  return cluster;
}
