/** `wgcni client …`: external clients (a laptop joining the mesh). */
import { Command } from "@commander-js/extra-typings";
import { opt } from "./_config.ts";
import { notYet } from "./_output.ts";

export function clientCommand() {
  const client = new Command("client").description("external clients that dial into the mesh");
  client.addCommand(
    new Command("add")
      .description("create a client key locally, register it, write a wg-quick config")
      .argument("<name>", "client name")
      .addOption(opt("--cluster <url>", "cluster manager URL"))
      .addOption(opt("--token <token>", "admin token"))
      .option("-o, --output <file>", "write the config here (mode 0600) instead of stdout")
      .action(() => notYet("wgcni client add")),
  );
  return client;
}
