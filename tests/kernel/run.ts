/**
 * The kernel group: the end-to-end suite in a qemu guest on Debian's own
 * kernel, so wgcni runs on kernel WireGuard (this machine's kernel has
 * none). Needs root; installs qemu and fetches the kernel package itself.
 *
 *   deno task test:kernel                         the end-to-end groups in the guest
 *   deno task test:kernel --all                   every end-to-end file there
 *   deno task test:kernel -- --filter NAME        extra arguments go to `deno test`
 *   deno run -A tests/kernel/run.ts --cmd -- CMD  any command in the guest, as root
 *
 * Ends with one line `N passed, N failed, N skipped` (the guest's tally)
 * and exits non-zero on any failure, or when nothing ran at all.
 * `--timeout MIN` bounds the whole guest run (default 60 minutes: about
 * 20 are usual, 30 on a busy machine).
 */
import { GUEST_TIME_SCALE, KERNEL_GROUP, runInGuest } from "./guest.ts";

const enc = new TextEncoder();
const out = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));
const err = (s: string) => Deno.stderr.writeSync(enc.encode(s + "\n"));

const args = [...Deno.args];
const sep = args.indexOf("--");
const rest = sep >= 0 ? args.splice(sep).slice(1) : [];
const cmdMode = args.includes("--cmd");
const t = args.indexOf("--timeout");
const timeoutMin = t >= 0 ? Number(args[t + 1]) : 60;
if (!(timeoutMin > 0)) {
  err("tests/kernel/run.ts: --timeout takes minutes, e.g. --timeout 60");
  Deno.exit(2);
}
if (Deno.uid() !== 0) {
  out("== kernel group SKIPPED: it needs root (qemu, namespaces in the guest)");
  out("0 passed, 0 failed, 1 skipped");
  Deno.exit(cmdMode ? 1 : 0);
}
if (cmdMode && rest.length === 0) {
  err("tests/kernel/run.ts --cmd -- CMD ARGS...: no command given");
  Deno.exit(2);
}

const root = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
const files = args.includes("--all") ? e2eFiles() : KERNEL_GROUP;
const argv = cmdMode ? rest : [
  Deno.execPath(),
  "run",
  "-A",
  "--cached-only",
  "tests/run.ts",
  "--e2e-only",
  "--e2e-files",
  files.join(","),
  "--",
  // Type-checked on this machine already; under emulation it would take minutes.
  "--no-check",
  ...rest,
];
const scale = Deno.env.get("WGCNI_TEST_TIME_SCALE") ?? String(GUEST_TIME_SCALE);

if (!cmdMode) {
  // The guest has no network: every module the suite loads must be in the cache already.
  const cached = await new Deno.Command(Deno.execPath(), {
    args: ["cache", "--quiet", "tests/run.ts", ...e2eFiles()],
    cwd: root,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!cached.success) {
    out("== kernel group: cannot cache the end-to-end tests' modules");
    out("0 passed, 1 failed, 0 skipped");
    Deno.exit(1);
  }
}

out(`== kernel group: ${argv.join(" ")} in a qemu guest (time scale ${scale})`);
const result = await runInGuest(argv, {
  cwd: root,
  env: {
    WGCNI_TEST_TIME_SCALE: scale,
    // The tests expect the kernel backend: a fall-back to wireguard-go fails them.
    WGCNI_TEST_BACKEND: "kernel",
    // The host's run covered what does not depend on the backend.
    WGCNI_TEST_SECOND_BACKEND: "1",
    DENO_NO_UPDATE_CHECK: "1",
    NO_COLOR: "1",
    ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
    ...(Deno.env.get("WGCNI_LOG_LEVEL")
      ? { WGCNI_LOG_LEVEL: Deno.env.get("WGCNI_LOG_LEVEL")! }
      : {}),
  },
  timeoutMs: timeoutMin * 60_000,
  // The group is about kernel WireGuard: a fall-back to wireguard-go fails loudly.
  ...(cmdMode ? {} : { forbid: ["wireguard-go"] }),
  onStdout: (c) => Deno.stdout.writeSync(c),
  onStderr: (c) => Deno.stderr.writeSync(c),
  log: (l) => out(`== guest: ${l}`),
});
const secs = result.seconds.toFixed(0);
if (result.code === undefined) {
  out(
    `== guest ended without an exit status after ${secs} s${
      result.timedOut
        ? ` (time-out of ${timeoutMin} min)`
        : result.interrupted
        ? " (interrupted)"
        : ""
    }; its console ended with:`,
  );
  out(result.console.trim().split("\n").slice(-30).join("\n"));
}

if (cmdMode) Deno.exit(result.code ?? 125);

const tally = [...result.stdout.matchAll(/^(\d+) passed, (\d+) failed, (\d+) skipped$/gm)].at(-1);
const [passed, failed, skipped] = tally ? tally.slice(1, 4).map(Number) : [0, 1, 0];
out(`== kernel group: guest ran ${secs} s, exit status ${result.code ?? "none"}`);
const ok = result.code === 0 && failed === 0 && (passed ?? 0) > 0;
if (result.code === 0 && passed === 0) out("== kernel group: nothing passed in the guest");
out(`${passed} passed, ${ok ? failed : Math.max(1, failed ?? 1)} failed, ${skipped} skipped`);
Deno.exit(ok ? 0 : 1);

function e2eFiles(): string[] {
  return [...Deno.readDirSync(`${root}/tests/e2e`)]
    .filter((e) => e.name.endsWith("_test.ts"))
    .map((e) => `tests/e2e/${e.name}`);
}
