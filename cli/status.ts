/** `wgcni status`: this node, its backend, peers and allocations. */
import { Command } from "@commander-js/extra-typings";
import { opt } from "./_config.ts";
import { say } from "./_output.ts";

export function statusCommand() {
  return new Command("status")
    .description("show this node's interface, backend, subnets, peers and allocations")
    .addOption(opt("--socket <path>", "local API socket").default("/run/wgcni/wgcni.sock"))
    .option("--json", "print as JSON")
    .action(async (o) => {
      const { nodeStatus, renderStatus } = await import("../modes/node/status.ts");
      const status = await nodeStatus(o.socket);
      say(o.json ? JSON.stringify(status, null, 2) : renderStatus(status));
    });
}
