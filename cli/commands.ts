/** The command tree: `wgcni cluster|node|client|status|demo|version`. */
import { Command, CommanderError } from "@commander-js/extra-typings";
import { CNI_VERSIONS, VERSION } from "../lib/version.ts";
import { ExitError, say, warn } from "./_output.ts";
import { checkEnvBooleans } from "./_config.ts";
import { clusterCommand } from "./cluster.ts";
import { nodeCommand } from "./node.ts";
import { clientCommand } from "./client.ts";
import { statusCommand } from "./status.ts";
import { demoCommand } from "./demo.ts";

/** The one line the plugin prints about itself when run without CNI_COMMAND. */
export const ABOUT = `wgcni ${VERSION}: WireGuard container networking; CNI versions ${
  CNI_VERSIONS.join(", ")
}`;

/** Builds the root command; exported so tests can inspect the tree. */
export function buildCli(): Command {
  const root = new Command("wgcni")
    .description("Container networking on WireGuard: cluster manager, node manager and CNI plugin")
    .version(VERSION, "-V, --version", "print the version")
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => say(s.replace(/\n$/, "")),
      writeErr: (s) => warn(s.replace(/\n$/, "")),
    });
  root.addCommand(clusterCommand());
  root.addCommand(nodeCommand());
  root.addCommand(clientCommand());
  root.addCommand(statusCommand());
  root.addCommand(demoCommand());
  root.addCommand(
    new Command("version")
      .description("print the version and the CNI versions the plugin speaks")
      .option("--json", "print as JSON")
      .action((opts) => {
        if (opts.json) {
          say(JSON.stringify({ version: VERSION, cniVersions: CNI_VERSIONS }));
        } else {
          say(`wgcni ${VERSION}`);
          say(`CNI versions: ${CNI_VERSIONS.join(", ")}`);
          say(`deno ${Deno.version.deno}`);
        }
      }),
  );
  // Every subcommand reports usage errors the same way as the root.
  const inherit = (cmd: Command) => {
    for (const sub of cmd.commands) {
      sub.exitOverride().showSuggestionAfterError(true).configureOutput({
        writeOut: (s) => say(s.replace(/\n$/, "")),
        writeErr: (s) => warn(s.replace(/\n$/, "")),
      });
      inherit(sub as Command);
    }
  };
  inherit(root);
  root.hook("preAction", (_root, action) => checkEnvBooleans(action));
  return root;
}

/**
 * Runs the command line and returns the exit code: 0 on success, 2 for a
 * usage error (unknown command, bad flag), 1 when the command itself fails.
 */
export async function runCli(args: readonly string[]): Promise<number> {
  if (args.length === 0) {
    warn(ABOUT);
    buildCli().outputHelp();
    return 0;
  }
  const root = buildCli();
  try {
    await root.parseAsync([...args], { from: "user" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === "commander.helpDisplayed" || err.code === "commander.version" ||
        err.code === "commander.help"
      ) return 0;
      // Commander has already printed its one-line message.
      return 2;
    }
    if (err instanceof ExitError) return err.exitCode;
    warn(`wgcni: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}
