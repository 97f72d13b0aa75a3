/** `wgcni client …`: external clients (a laptop joining the mesh). */
import { Command } from "@commander-js/extra-typings";
import { say, warn } from "./_output.ts";
import { withApiFlags } from "./cluster.ts";
import { adminClient, table, when } from "../modes/cluster/admin.ts";
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
      const api = await adminClient(o);
      try {
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
      } finally {
        api.close();
      }
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
      const api = await adminClient(o);
      try {
        const answer = await refreshClient(api, { name, file: o.config });
        warn(`client ${name}: ${answer.nodes.length} node peer(s) in ${o.config}`);
      } finally {
        api.close();
      }
    }),
  );
  client.addCommand(
    withApiFlags(
      new Command("list").description("list external clients").option("--json", "print as JSON"),
    ).action(async (o) => {
      const api = await adminClient(o);
      try {
        const clients = await api.clients();
        if (o.json) return say(JSON.stringify(clients));
        say(table(
          ["NAME", "ADDRESSES", "CREATED", "PUBLIC KEY"],
          clients.map((c) => [c.name, c.addresses.join(","), when(c.createdAt), c.publicKey]),
        ));
      } finally {
        api.close();
      }
    }),
  );
  client.addCommand(
    withApiFlags(
      new Command("remove")
        .description("remove an external client; nodes drop it as a peer")
        .argument("<name>", "client name"),
    ).action(async (name, o) => {
      const api = await adminClient(o);
      try {
        await api.removeClient(name);
        say(`removed client ${name}`);
      } finally {
        api.close();
      }
    }),
  );
  return client;
}
