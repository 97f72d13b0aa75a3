/**
 * `deno task bench:kernel`: the CNI and data-plane benchmarks on kernel
 * WireGuard, in the kernel group's qemu guest (Debian's own kernel; this
 * machine's has no WireGuard), written to docs/benchmarks-kernel.md. The
 * guest's CPU is emulated: its absolute figures are many times slower than
 * the machine's, and only the ratios to the references measured in the same
 * guest run count. Needs root. Counts are lowered for the emulated CPU
 * (WGCNI_BENCH_PODS, WGCNI_BENCH_BURST override them).
 */
import { GUEST_TIME_SCALE, runInGuest } from "../tests/kernel/guest.ts";
import { EMIT_BEGIN, EMIT_END } from "./_report.ts";

const enc = new TextEncoder();
const out = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));
if (Deno.uid() !== 0) {
  out("bench:kernel: needs root (qemu, namespaces in the guest)");
  Deno.exit(1);
}
const names = Deno.args.length > 0 ? Deno.args : ["cni", "dataplane"];
const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const cached = await new Deno.Command(Deno.execPath(), {
  args: ["cache", "--quiet", "bench/run.ts", "bench/cni.ts", "bench/dataplane.ts", "cli/main.ts"],
  cwd: root,
}).output();
if (!cached.success) {
  out("bench:kernel: cannot cache the benchmarks' modules (the guest has no network)");
  Deno.exit(1);
}
let kernel = "";
const result = await runInGuest(
  [Deno.execPath(), "run", "-A", "--cached-only", "--no-check", "bench/run.ts", "--emit", ...names],
  {
    cwd: root,
    env: {
      WGCNI_TEST_TIME_SCALE: String(GUEST_TIME_SCALE),
      WGCNI_BENCH_PODS: Deno.env.get("WGCNI_BENCH_PODS") ?? "30",
      WGCNI_BENCH_BURST: Deno.env.get("WGCNI_BENCH_BURST") ?? "20",
      // Each ADD takes seconds under emulation: a ring of 30 pods.
      WGCNI_BENCH_RING_PODS: Deno.env.get("WGCNI_BENCH_RING_PODS") ?? "30",
      DENO_NO_UPDATE_CHECK: "1",
      NO_COLOR: "1",
      ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
    },
    timeoutMs: 60 * 60_000,
    // On kernel WireGuard: a fall-back to wireguard-go fails loudly.
    forbid: ["wireguard-go"],
    onStdout: (c) => Deno.stdout.writeSync(c),
    onStderr: (c) => Deno.stderr.writeSync(c),
    log: (l) => {
      kernel = l.match(/kernel (\S+)/)?.[1] ?? kernel;
      out(`== guest: ${l}`);
    },
  },
);
const text = result.stdout;
const from = text.lastIndexOf(EMIT_BEGIN);
const to = text.lastIndexOf(EMIT_END);
if (result.code !== 0 || from < 0 || to < from) {
  out(`bench:kernel: the guest run failed (exit status ${result.code ?? "none"})`);
  Deno.exit(1);
}
const sections = text.slice(from + EMIT_BEGIN.length, to).trim();
const header = [
  "# wgcni benchmarks on kernel WireGuard",
  "",
  `Measured ${new Date().toISOString().slice(0, 10)} in the kernel group's qemu guest ` +
  `(Debian's kernel ${kernel}, 2 emulated CPUs on this machine's 2 cores, ` +
  "software emulation). The guest's CPU runs many times slower than the machine's, so its " +
  "absolute figures are not comparable with docs/benchmarks.md; every reference is measured " +
  "in the same guest run and only the ratios count. Written by `deno task bench:kernel`.",
  "",
].join("\n");
await Deno.writeTextFile(`${root}/docs/benchmarks-kernel.md`, `${header}\n${sections}\n`);
out("wrote docs/benchmarks-kernel.md");
