/** `wgcni client …`: external clients (a laptop joining the mesh). */
import { Command } from "@commander-js/extra-typings";
import { say, warn } from "./_output.ts";
import { listCommand, removeCommand, withApiFlags } from "./_admin.ts";
import { adminClient, when } from "../modes/cluster/admin.ts";
import { addClient, refreshClient } from "../modes/cluster/client_config.ts";

export function clientCommand() {
  const client = new Command("client").description("external clients that dial into the mesh");
  client.addCommand(
    withApiFlags(
      new Command("add")
        .description("create a client key locally, register it, write a wg-quick config")
        .argument("<name>", "client name")
        .option("-o, --output <file>", "write the config here (mode 0600) instead of stdout"),
    ).action(async (name, o) => {
      using api = await adminClient(o);
      const { config, answer } = await addClient(api, {
        name,
        ...(o.output !== undefined ? { output: o.output } : {}),
      });
      if (o.output === undefined) say(config.replace(/\n$/, ""));
      warn(
        `client ${answer.client.name}: ${
          answer.client.addresses.join(", ")
        }, ${answer.nodes.length} node peer(s)${
          o.output !== undefined ? `, config in ${o.output}` : ""
        }`,
      );
    }),
  );
  client.addCommand(
    withApiFlags(
      new Command("refresh")
        .description(
          "rewrite a client's wg-quick config with every node as of now, keeping its private key",
        )
        .argument("<name>", "client name")
        .requiredOption("-c, --config <file>", "the client's wg-quick config, rewritten in place"),
    ).action(async (name, o) => {
      using api = await adminClient(o);
      const answer = await refreshClient(api, { name, file: o.config });
      warn(`client ${name}: ${answer.nodes.length} node peer(s) in ${o.config}`);
    }),
  );
  client.addCommand(
    listCommand("list external clients", (api) => api.clients(), {
      headers: ["NAME", "ADDRESSES", "CREATED", "PUBLIC KEY"],
      row: (c) => [c.name, c.addresses.join(","), when(c.createdAt), c.publicKey],
    }),
  );
  client.addCommand(removeCommand("client", {
    description: "remove an external client; nodes drop it as a peer",
    remove: (api, name) => api.removeClient(name),
  }));
  return client;
}
