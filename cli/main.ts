#!/usr/bin/env -S deno run -A
/**
 * The wgcni executable. With CNI_COMMAND set it is the CNI plugin and loads
 * only the plugin's modules; otherwise it is the command tree.
 */
if (Deno.env.get("CNI_COMMAND") !== undefined) {
  const { pluginMain } = await import("../modes/cni/main.ts");
  Deno.exit(await pluginMain());
} else {
  const { runCli } = await import("./commands.ts");
  Deno.exit(await runCli(Deno.args));
}
