/** `wgcni status`: this node, its backend, peers and allocations. */
import { Command } from "@commander-js/extra-typings";
import { opt } from "./_config.ts";
import { notYet } from "./_output.ts";

export function statusCommand() {
  return new Command("status")
    .description("show this node's interface, backend, subnets, peers and allocations")
    .addOption(opt("--socket <path>", "local API socket").default("/run/wgcni/wgcni.sock"))
    .option("--json", "print as JSON")
    .action(() => notYet("wgcni status"));
}
