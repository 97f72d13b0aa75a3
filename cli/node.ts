/** `wgcni node …`: the node manager. */
import { Command } from "@commander-js/extra-typings";
import { intArg, opt, withConfigFile } from "./_config.ts";
import { notYet } from "./_output.ts";

export function nodeCommand() {
  const node = new Command("node").description(
    "the node manager: the node's WireGuard interface, peers, pod addresses, local API",
  );
  node.addCommand(
    withConfigFile(
      new Command("join")
        .description("register with the cluster and keep this node's mesh in step")
        .argument("<url>", "cluster manager URL(s), comma-separated")
        .addOption(opt("--token <token>", "join token"))
        .addOption(opt("--name <name>", "node name (default: hostname)"))
        .addOption(opt("--endpoint <ip[:port]>", "underlay address others reach this node at"))
        .addOption(opt("--interface <name>", "WireGuard interface").default("wgcni0"))
        .addOption(
          opt("--listen-port <port>", "WireGuard UDP port").argParser(
            intArg("--listen-port", 1, 65535),
          ).default(51820),
        )
        .addOption(
          opt("--state-dir <dir>", "allocation state (cleared by reboot)").default("/run/wgcni"),
        )
        .addOption(opt("--key-dir <dir>", "the node's private key").default("/var/lib/wgcni"))
        .addOption(opt("--socket <path>", "local API socket").default("/run/wgcni/wgcni.sock"))
        .addOption(
          opt("--cni-conf-dir <dir>", "where the conflist is written").default("/etc/cni/net.d"),
        )
        .addOption(opt("--cni-bin-dir <dir>", "where the plugin is linked").default("/opt/cni/bin"))
        .addOption(opt("--masquerade <families>", "v4,v6 | v4 | v6 | none").default("v4,v6"))
        .addOption(
          opt("--mtu <n>", "MTU of WireGuard interfaces").argParser(intArg("--mtu", 1280, 65535)),
        )
        .addOption(opt("--ca <file>", "CA certificate to verify the cluster API"))
        .action(() => notYet("wgcni node join")),
    ),
  );
  node.addCommand(
    new Command("leave")
      .description("deregister and remove the interface, rules, conflist and state")
      .action(() => notYet("wgcni node leave")),
  );
  return node;
}
