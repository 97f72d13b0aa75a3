/**
 * The whole suite: unit tests always; end-to-end tests when running as root
 * with the networking tools present (otherwise it says which are missing and
 * skips them). Ends with one line `N passed, N failed, N skipped`.
 *
 *   deno task test            unit + e2e
 *   deno task test --unit     unit only
 *   deno task test --e2e-only e2e only
 *   extra arguments after `--` go to `deno test` (e.g. `-- --filter ipam`)
 *
 * With an `etcd` binary present, the cluster API tests run a second time on
 * a one-member etcd the runner starts (and kills) itself.
 */
import { hasEtcd, startEtcd } from "./unit/_etcd.ts";

const args = [...Deno.args];
const sep = args.indexOf("--");
const extra = sep >= 0 ? args.splice(sep).slice(1) : [];
const unitOnly = args.includes("--unit");
const e2eOnly = args.includes("--e2e-only");
/** `--e2e-files A,B`: these end-to-end files instead of the whole folder (the kernel group's choice). */
const f = args.indexOf("--e2e-files");
const e2eTargets = f >= 0 ? (args[f + 1] ?? "").split(",").filter((x) => x) : ["tests/e2e/"];
const enc = new TextEncoder();
const out = (s: string) => Deno.stdout.writeSync(enc.encode(s + "\n"));

const E2E_TOOLS = ["ip", "wg", "wireguard-go", "nft", "nsenter", "ping"];

async function has(tool: string): Promise<boolean> {
  try {
    const r = await new Deno.Command("sh", { args: ["-c", `command -v ${tool}`], stdout: "null" })
      .output();
    return r.success;
  } catch {
    return false;
  }
}

/** Why end-to-end tests cannot run here, or undefined when they can. */
async function e2eBlocker(): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "they need root";
  const missing: string[] = [];
  for (const t of E2E_TOOLS) if (!(await has(t))) missing.push(t);
  if (missing.length) return `missing tools: ${missing.join(", ")} (run ./install.sh)`;
  return undefined;
}

interface Tally {
  passed: number;
  failed: number;
  ignored: number;
}

async function denoTest(label: string, testArgs: string[], env: Record<string, string>) {
  out(`== ${label}: deno test ${testArgs.join(" ")}`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", ...testArgs, ...extra],
    env: { ...env, NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const tally: Tally = { passed: 0, failed: 0, ignored: 0 };
  let buf = "";
  const dec = new TextDecoder();
  for await (const chunk of child.stdout) {
    Deno.stdout.writeSync(chunk);
    buf += dec.decode(chunk, { stream: true });
  }
  const status = await child.status;
  for (
    const m of buf.matchAll(
      /^(?:ok|FAILED) \| (\d+) passed.*?\| (\d+) failed(?: \| (\d+) ignored)?/gm,
    )
  ) {
    tally.passed += Number(m[1]);
    tally.failed += Number(m[2]);
    tally.ignored += Number(m[3] ?? 0);
  }
  if (!status.success && tally.failed === 0) tally.failed = 1; // a crash or a type error
  return tally;
}

const total: Tally = { passed: 0, failed: 0, ignored: 0 };
const add = (t: Tally) => {
  total.passed += t.passed;
  total.failed += t.failed;
  total.ignored += t.ignored;
};

if (!e2eOnly) {
  add(await denoTest("unit", ["--parallel", "tests/unit/"], {}));
  // The cluster API once more on a real etcd: the same tests, the other store.
  if (hasEtcd()) {
    await using etcd = await startEtcd(1);
    add(
      await denoTest("unit, cluster API on etcd", ["tests/unit/cluster_app_test.ts"], {
        WGCNI_TEST_STORE: "etcd",
        WGCNI_TEST_ETCD: etcd.endpoints.join(","),
      }),
    );
  } else {
    out("== unit, cluster API on etcd SKIPPED: no etcd binary (apt-get install etcd-server)");
    total.ignored += 1;
  }
}
if (!unitOnly) {
  const hasE2e = [...Deno.readDirSync("tests/e2e")].some((e) => e.name.endsWith("_test.ts"));
  const why = hasE2e ? await e2eBlocker() : "none written yet";
  if (why === undefined) {
    add(await denoTest("end-to-end", ["--parallel", ...e2eTargets], { WGCNI_E2E: "1" }));
  } else {
    out(`== end-to-end tests SKIPPED: ${why}`);
    const listed = !hasE2e ? undefined : await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", "tests/e2e/", ...extra],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = listed && new TextDecoder().decode(listed.stdout).match(/\| (\d+) ignored/);
    total.ignored += Number(m?.[1] ?? 0);
  }
}
out(`${total.passed} passed, ${total.failed} failed, ${total.ignored} skipped`);
Deno.exit(total.failed === 0 ? 0 : 1);
