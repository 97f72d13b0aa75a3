#!/usr/bin/env -S deno run -A
/**
 * The wgcni executable. With CNI_COMMAND set it is the CNI plugin and loads
 * only the plugin's modules; otherwise it is the command tree.
 *
 * The command tree's specifier is kept out of Deno's static analysis: an
 * analysable `import("./commands.ts")` makes every start walk the whole
 * command graph (~7 ms per pod for the plugin). `deno compile` gets it with
 * `--include cli/commands.ts`; `deno task check` checks `cli/` directly.
 */
if (Deno.env.get("CNI_COMMAND") !== undefined) {
  const { pluginMain } = await import("../modes/cni/main.ts");
  Deno.exit(await pluginMain());
} else {
  const commands: string = "./commands.ts";
  const { runCli } = await import(commands) as typeof import("./commands.ts");
  Deno.exit(await runCli(Deno.args));
}
