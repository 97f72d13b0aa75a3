/** The command tree: `wgcni cluster|node|client|status|demo|version`. */
import { Command, CommanderError, InvalidArgumentError } from "@commander-js/extra-typings";
import { CNI_VERSIONS, VERSION } from "../lib/version.ts";
import { ExitError, say, warn } from "./_output.ts";
import { checkEnvBooleans } from "./_config.ts";
import { commandTable, printCompletion } from "./completion.ts";
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
  root.addCommand(
    new Command("completion")
      .description("print a shell completion script (bash, zsh or fish)")
      .argument("<shell>", "bash, zsh or fish", (v) => {
        if (!["bash", "zsh", "fish"].includes(v)) {
          throw new InvalidArgumentError(`expected bash, zsh or fish, got "${v}"`);
        }
        return v;
      })
      .action((shell) => printCompletion(shell, commandTable(root))),
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
  const unknown = unknownCommand(root, args);
  if (unknown !== undefined) {
    warn(unknown);
    return 2;
  }
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

/**
 * The usage error for a word that names no command of a command group
 * (`wgcni cluster token rotate --help` would otherwise print the group's
 * help and succeed); undefined when the words are fine.
 */
function unknownCommand(root: Command, args: readonly string[]): string | undefined {
  let cmd: Command = root;
  for (const a of args) {
    if (a.startsWith("-")) return undefined;
    if (cmd.commands.length === 0) return undefined;
    const next = cmd.commands.find((c) => c.name() === a || c.aliases().includes(a));
    if (next === undefined) {
      if (a === "help") return undefined;
      const names = cmd.commands.map((c) => c.name()).filter((n) => n !== "help");
      return `error: unknown command '${a}' of wgcni ${[...pathOf(cmd)].join(" ")} (expected ${
        names.join(", ")
      })`.replace("wgcni  ", "wgcni ");
    }
    cmd = next as Command;
  }
  return undefined;
}

function pathOf(cmd: Command): string[] {
  const names: string[] = [];
  for (let c: Command | null = cmd; c !== null && c.parent !== null; c = c.parent as Command) {
    names.unshift(c.name());
  }
  return names;
}
