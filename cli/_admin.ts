/** The shape of the admin commands (`cluster token|node …`, `client …`): API flags, a client, a line or a table. */
import { Command, type OptionValues } from "@commander-js/extra-typings";
import { opt } from "./_config.ts";
import { say } from "./_output.ts";
import type { ClusterClient } from "../lib/api/cluster_client.ts";
import { adminClient, table } from "../modes/cluster/admin.ts";

/** Adds the flags every admin command needs to reach the API. */
// deno-lint-ignore no-explicit-any
export function withApiFlags<A extends any[], O extends OptionValues>(cmd: Command<A, O>) {
  return cmd
    .addOption(opt("--cluster <url>", "cluster manager URL").default("http://127.0.0.1:7443"))
    .addOption(opt("--token <token>", "admin token (better: --token-file)", "WGCNI_ADMIN_TOKEN"))
    .addOption(
      opt("--token-file <file>", "file holding the admin token", "WGCNI_ADMIN_TOKEN_FILE"),
    )
    .addOption(opt("--ca <file>", "CA certificate to verify the cluster API"))
    .addOption(
      opt(
        "--insecure",
        "allow plain HTTP to a manager that is not on loopback (sends the token in clear)",
      ),
    );
}

/** How a `list` command shows what it read: a table, or JSON with --json. */
export interface Listing<T> {
  readonly headers: readonly string[];
  /** A table row; `now` is when the list was read. */
  readonly row: (item: T, now: number) => string[];
  /** An item as JSON (default: as read). */
  readonly json?: (item: T, now: number) => unknown;
}

/** `list`: reads a list from the API and prints it as a table (or JSON). */
export function listCommand<T>(
  description: string,
  read: (api: ClusterClient) => Promise<readonly T[]>,
  listing: Listing<T>,
) {
  return withApiFlags(
    new Command("list").description(description).option("--json", "print as JSON"),
  ).action(async (o) => {
    using api = await adminClient(o);
    const items = await read(api);
    const now = Date.now();
    const json = listing.json;
    if (o.json) return say(JSON.stringify(json ? items.map((x) => json(x, now)) : items));
    say(table(listing.headers, items.map((x) => listing.row(x, now))));
  });
}

/** A command on one named thing (`remove NAME`, `revoke ID`): the API call, then one line. */
export function onOneCommand(options: {
  readonly name: string;
  readonly description: string;
  /** The argument: `<name>` or `<id>`, and its description. */
  readonly argument: readonly [string, string];
  readonly act: (api: ClusterClient, arg: string) => Promise<unknown>;
  readonly done: (arg: string) => string;
}) {
  return withApiFlags(
    new Command(options.name).description(options.description)
      .argument(options.argument[0], options.argument[1]),
  ).action(async (arg: string, o) => {
    using api = await adminClient(o);
    await options.act(api, arg);
    say(options.done(arg));
  });
}

/** `remove NAME` of one kind of thing (`client`, `node`), then `removed KIND NAME`. */
export function removeCommand(
  kind: string,
  options: {
    readonly description: string;
    readonly remove: (api: ClusterClient, name: string) => Promise<unknown>;
  },
) {
  return onOneCommand({
    name: "remove",
    description: options.description,
    argument: ["<name>", `${kind} name`],
    act: options.remove,
    done: (name) => `removed ${kind} ${name}`,
  });
}
