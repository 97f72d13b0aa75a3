/** How to run this same wgcni executable again as a child process. */

/**
 * The argv prefix that starts this wgcni: the compiled binary itself, or
 * `deno run` of the sources this module belongs to.
 */
export function selfArgv(): string[] {
  const here = new URL(import.meta.url);
  if (here.protocol !== "file:") return [Deno.execPath()];
  const root = new URL("..", here).pathname;
  const compiled = !/deno$/.test(Deno.execPath());
  if (compiled) return [Deno.execPath()];
  // Offline, as the installed launcher runs: no registry look-ups from inside a node.
  return [
    Deno.execPath(),
    "run",
    "-A",
    "--cached-only",
    "--config",
    `${root}deno.json`,
    `${root}cli/main.ts`,
  ];
}

/** A tiny shell launcher for `argv`, so runtimes (and the demo) can exec the plugin by path. */
export function launcherScript(argv: readonly string[]): string {
  const quoted = argv.map((a) => `'${a.replaceAll("'", `'"'"'`)}'`).join(" ");
  return `#!/bin/sh\nexport DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1\nexec ${quoted} "$@"\n`;
}
