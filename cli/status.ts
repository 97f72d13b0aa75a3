/** `wgcni status`: this node, its backend, peers and allocations. */
import { Command } from "@commander-js/extra-typings";
import { opt } from "./_config.ts";
import { ExitError, say } from "./_output.ts";

export function statusCommand() {
  return new Command("status")
    .description("show this node's interface, backend, subnets, peers and allocations")
    .addOption(opt("--socket <path>", "local API socket").default("/run/wgcni/wgcni.sock"))
    .option("--json", "print as JSON")
    .action(async (o) => {
      const { nodeStatus, renderStatus, statusJson } = await import("../modes/node/status.ts");
      let status;
      try {
        status = await nodeStatus(o.socket);
      } catch (err) {
        // A script asked for JSON: it gets JSON, with the reason, and the exit code.
        if (o.json) {
          say(JSON.stringify({ error: (err as Error).message }));
          throw new ExitError(1);
        }
        throw err;
      }
      say(o.json ? JSON.stringify(statusJson(status), null, 2) : renderStatus(status));
    });
}
