/** `wgcni demo`: a local multi-node cluster in network namespaces. */
import { Command } from "@commander-js/extra-typings";
import { intArg } from "./_config.ts";
import { notYet } from "./_output.ts";

export function demoCommand() {
  return new Command("demo")
    .description("build a local cluster in network namespaces and show pods reaching each other")
    .option("--nodes <n>", "simulated nodes", intArg("--nodes", 1, 16), 3)
    .option("--pods <m>", "pods per node", intArg("--pods", 0, 32), 2)
    .option("--keep", "leave the cluster running")
    .option("--down", "remove a cluster left by --keep")
    .action(() => notYet("wgcni demo"));
}
