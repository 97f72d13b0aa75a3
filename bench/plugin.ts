/**
 * Plugin start: `CNI_COMMAND=VERSION` of wgcni (as the installed launcher
 * runs it) against Debian's `ptp` and against an empty Deno script, the
 * floor of any Deno program. Uses hyperfine, in rounds: each round times the
 * three commands one after the other, and the figures are the medians over
 * the rounds, so that a drift of the machine between commands does not land
 * on one of them.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable, pct } from "./_report.ts";

const ROUNDS = 5;
const RUNS = 20;

async function hyperfine(commands: string[]): Promise<{ mean: number; median: number }[]> {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/h.json`;
    const r = await new Deno.Command("hyperfine", {
      args: ["-N", "--warmup", "5", "--runs", String(RUNS), "--export-json", out, ...commands],
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
    const rounds: { median: number }[][] = [];
    for (let r = 0; r < ROUNDS; r++) {
      rounds.push(
        await hyperfine([wgcni, "/usr/lib/cni/ptp", `${deno} run --cached-only ${dir}/empty.ts`]),
      );
    }
    const at = (r: { median: number }[], i: number) => r[i]?.median ?? NaN;
    const medianOf = (i: number) => pct(rounds.map((r) => at(r, i)), 50);
    const [w, ptp, floor] = [medianOf(0), medianOf(1), medianOf(2)];
    const perRound = rounds.map((r) => at(r, 0) - at(r, 2));
    const above = pct(perRound, 50);
    const which = installed ? "installed launcher" : "deno run of the sources";
    return [
      {
        bench: "plugin",
        name: `VERSION start, median (${which})`,
        value: w,
        unit: "ms",
        reference: "ptp",
        referenceValue: ptp,
      },
      {
        bench: "plugin",
        name: "VERSION start, median",
        value: w,
        unit: "ms",
        reference: "empty Deno script",
        referenceValue: floor,
        note: `${
          above.toFixed(1)
        } ms above the floor (median over ${ROUNDS} rounds of ${RUNS} runs; per round ${
          perRound.map((d) => d.toFixed(1)).join(", ")
        }); aim ≤ 5 ms: ${
          above <= 5
            ? "met"
            : "NOT met; the plugin's own modules are read from the cache and evaluated on every start, which the empty script does not do"
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
