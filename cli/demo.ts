/** `wgcni demo`: a local multi-node cluster in network namespaces. */
import { Command } from "@commander-js/extra-typings";
import { intArg, opt } from "./_config.ts";
import { ExitError, say } from "./_output.ts";

export function demoCommand() {
  return new Command("demo")
    .description("build a local cluster in network namespaces and show pods reaching each other")
    .option("--nodes <n>", "simulated nodes", intArg("--nodes", 1, 16), 3)
    .option("--pods <m>", "pods per node", intArg("--pods", 0, 32), 2)
    .option("--keep", "leave the cluster running")
    .option("--down", "remove a cluster left by --keep")
    .addOption(
      opt("--state-file <file>", "where --keep records the cluster").default(
        "/run/wgcni-demo/state.json",
      ),
    )
    .action(async (opts) => {
      const { runDemo } = await import("../modes/demo/run.ts");
      const { SystemRunner } = await import("../lib/ip/runner.ts");
      const { getLogger, setupLogging } = await import("../lib/log.ts");
      await setupLogging();
      const outcome = await runDemo(
        {
          nodes: opts.nodes,
          pods: opts.pods,
          keep: opts.keep ?? false,
          down: opts.down ?? false,
          stateFile: opts.stateFile,
        },
        { runner: new SystemRunner(), logger: getLogger("demo"), print: say },
      );
      if (outcome.code !== 0) throw new ExitError(outcome.code);
    });
}
