/**
 * Plugin start: `CNI_COMMAND=VERSION` of wgcni (as the installed launcher
 * runs it) against Debian's `ptp` and against an empty Deno script, the
 * floor of any Deno program. Uses hyperfine.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable } from "./_report.ts";

async function hyperfine(commands: string[]): Promise<{ mean: number; median: number }[]> {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/h.json`;
    const r = await new Deno.Command("hyperfine", {
      args: ["-N", "--warmup", "5", "--runs", "60", "--export-json", out, ...commands],
      stdout: "null",
      stderr: "piped",
      env: { CNI_COMMAND: "VERSION", DENO_NO_UPDATE_CHECK: "1" },
    }).output();
    if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
    const json = JSON.parse(await Deno.readTextFile(out)) as {
      results: { mean: number; median: number }[];
    };
    return json.results.map((x) => ({ mean: x.mean * 1000, median: x.median * 1000 }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

export async function run(): Promise<BenchRow[]> {
  const root = new URL("..", import.meta.url).pathname;
  const deno = Deno.execPath();
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/empty.ts`, "");
    const installed = await Deno.stat("/usr/local/bin/wgcni").then(() => true, () => false);
    const wgcni = installed
      ? "/usr/local/bin/wgcni"
      : `${deno} run -A --cached-only --config ${root}deno.json ${root}cli/main.ts`;
    const [w, ptp, floor] = await hyperfine([
      wgcni,
      "/usr/lib/cni/ptp",
      `${deno} run --cached-only ${dir}/empty.ts`,
    ]) as unknown as [{ median: number }, { median: number }, { median: number }];
    const which = installed ? "installed launcher" : "deno run of the sources";
    return [
      {
        bench: "plugin",
        name: `VERSION start, median (${which})`,
        value: w.median,
        unit: "ms",
        reference: "ptp",
        referenceValue: ptp.median,
      },
      {
        bench: "plugin",
        name: "VERSION start, median",
        value: w.median,
        unit: "ms",
        reference: "empty Deno script",
        referenceValue: floor.median,
        note: `${(w.median - floor.median).toFixed(1)} ms above the floor; aim ≤ 5 ms: ${
          w.median - floor.median <= 5
            ? "met"
            : "NOT met; the plugin's own modules are loaded from the cache and evaluated on every start, which the empty script does not do"
        }`,
      },
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(await run()) + "\n"));
}
