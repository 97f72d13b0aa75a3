/**
 * `deno task bench [name...]`: runs the benchmarks (each module in bench/
 * exporting `run(): Promise<BenchRow[]>`), prints their rows and writes
 * docs/benchmarks.md with the machine, versions and every figure next to its
 * reference measured in the same run.
 */
import type { BenchRow } from "./_report.ts";
import { EMIT_BEGIN, EMIT_END, markdownTable } from "./_report.ts";

/** Benchmark modules in the order they run; each can also run alone. */
const MODULES: Record<string, string> = {
  ipam: "./ipam.ts",
  node_ipam: "./node_ipam.ts",
  cluster: "./cluster.ts",
  api: "./api.ts",
  watch_memory: "./watch_memory.ts",
  plugin: "./plugin.ts",
  cni: "./cni.ts",
  peers: "./peers.ts",
  dataplane: "./dataplane.ts",
  density: "./density.ts",
  nat: "./nat.ts",
  rotation: "./rotation.ts",
};

const wanted = Deno.args.filter((a) => !a.startsWith("-"));
const names = wanted.length ? wanted : Object.keys(MODULES);
const enc = new TextEncoder();
const print = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));

const DOC = new URL("../docs/benchmarks.md", import.meta.url);
const sections: { name: string; text: string }[] = [];
for (const name of names) {
  const path = MODULES[name];
  if (path === undefined) {
    print(`bench: unknown benchmark "${name}" (known: ${Object.keys(MODULES).join(", ")})`);
    Deno.exit(2);
  }
  let mod: { run?: () => Promise<BenchRow[]> };
  try {
    mod = await import(path);
  } catch (err) {
    if (String(err).includes("Module not found")) {
      print(`== ${name}: not written yet, skipped`);
      continue;
    }
    throw err;
  }
  if (typeof mod.run !== "function") continue;
  print(`== ${name}`);
  const t0 = performance.now();
  const rows = await mod.run();
  const table = markdownTable(rows);
  print(table);
  sections.push({
    name,
    text: `## ${name}\n\n${table}\n\n(${((performance.now() - t0) / 1000).toFixed(0)} s)\n`,
  });
}

const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ?? "?";
const header = [
  "# wgcni benchmarks",
  "",
  `Measured ${
    new Date().toISOString().slice(0, 10)
  } on ${navigator.hardwareConcurrency} cores (${cpu}), ` +
  `${(Deno.systemMemoryInfo().total / 2 ** 30).toFixed(0)} GiB, Deno ${Deno.version.deno}. ` +
  "Every reference is measured in the same run on the same machine; ratio = wgcni / reference.",
  "This machine's kernel has no WireGuard, so these figures are wireguard-go's; the CNI and " +
  "data-plane figures on kernel WireGuard are in docs/benchmarks-kernel.md (`deno task bench:kernel`).",
  "",
].join("\n");
if (Deno.args.includes("--emit")) {
  // For a caller that runs this elsewhere (the kernel guest) and keeps the sections.
  print(`${EMIT_BEGIN}\n${sections.map((x) => x.text).join("\n")}\n${EMIT_END}`);
} else if (wanted.length === 0) {
  await Deno.writeTextFile(DOC, header + "\n" + sections.map((x) => x.text).join("\n"));
  print("wrote docs/benchmarks.md");
} else if (Deno.args.includes("--update-docs")) {
  // Only the sections run now are replaced (marked with today's date); the
  // others keep the figures of their last run.
  let doc = await Deno.readTextFile(DOC);
  const today = new Date().toISOString().slice(0, 10);
  for (const { name, text } of sections) {
    const section = text.replace(/\((\d+ s)\)\n$/, `($1, measured ${today})\n`);
    const at = doc.indexOf(`## ${name}\n`);
    const next = at < 0 ? -1 : doc.indexOf("\n## ", at + 1);
    doc = at < 0
      ? `${doc}\n${section}`
      : doc.slice(0, at) + section + (next < 0 ? "" : doc.slice(next));
  }
  await Deno.writeTextFile(DOC, doc);
  print(`updated ${sections.map((x) => x.name).join(", ")} in docs/benchmarks.md`);
}
