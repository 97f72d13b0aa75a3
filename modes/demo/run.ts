/**
 * `wgcni demo`: a local multi-node cluster in network namespaces, pods
 * attached through the real plugin path, and a reachability matrix.
 */
import { pathExists } from "../../lib/fs.ts";
import type { Logger } from "../../lib/log.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import { Lab, type LabPod, type LabState, teardownState, UNDERLAY } from "./lab.ts";

export interface DemoOptions {
  readonly nodes: number;
  readonly pods: number;
  readonly keep: boolean;
  readonly down: boolean;
  /** Where a kept demo's state lives (default /run/wgcni-demo/state.json). */
  readonly stateFile?: string;
}

export interface DemoIo {
  readonly runner: Runner;
  readonly logger: Logger;
  /** Prints one line of progress or result. */
  readonly print: (line: string) => void;
}

const DEFAULT_STATE = "/run/wgcni-demo/state.json";
const TOOLS = ["ip", "wg", "nft", "nsenter", "ping", "bash"];

/** Outcome of a demo run: the exit code and what was reached, for tests. */
export interface DemoOutcome {
  readonly code: number;
  readonly reachable?: { v4: [number, number]; v6: [number, number] };
}

/** Runs the demo; returns its exit code (0 when every pod reached every pod over both families). */
export async function runDemo(options: DemoOptions, io: DemoIo): Promise<DemoOutcome> {
  const { print, runner } = io;
  const stateFile = options.stateFile ?? DEFAULT_STATE;
  const missing = await preflight(runner);
  if (missing) {
    print(`wgcni demo: ${missing}`);
    return { code: 1 };
  }
  if (options.down) return { code: await down(runner, stateFile, print) };
  if (await pathExists(stateFile)) {
    print(
      `wgcni demo: a demo cluster kept with --keep is still running (state in ${stateFile}); remove it with: wgcni demo --down`,
    );
    return { code: 1 };
  }

  const t0 = performance.now();
  const steps = 6;
  let step = 0;
  const progress = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    step++;
    const s0 = performance.now();
    const r = await fn();
    print(`[${step}/${steps}] ${what} ... ok (${secs(performance.now() - s0)})`);
    return r;
  };

  print(`wgcni demo: ${options.nodes} nodes, ${options.pods} pods each, in network namespaces`);
  const lab = await Lab.create(runner, io.logger);
  let interrupted = false;
  let stopping: Promise<void> | undefined;
  let interrupt: (err: Error) => void = () => {};
  const onInterrupt = new Promise<never>((_, reject) => interrupt = reject);
  onInterrupt.catch(() => {});
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    print("wgcni demo: interrupted, cleaning up");
    stopping = lab.teardown();
    interrupt(new Error("interrupted"));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let keepNow = false;
  try {
    return await Promise.race([
      (async (): Promise<DemoOutcome> => {
        await progress(
          `underlay ${lab.underlay}: bridge ${UNDERLAY.bridgeV4}/${UNDERLAY.prefixV4}`,
          () => Promise.resolve(),
        );
        await progress(`cluster manager at ${lab.clusterUrl}`, () => lab.startCluster());
        const nodes = await progress(
          `${options.nodes} node managers joined (${
            Array.from({ length: options.nodes }, (_, i) => `node${i + 1}`).join(", ")
          })`,
          () => Promise.all(Array.from({ length: options.nodes }, (_, i) => lab.addNode(i + 1))),
        );
        print("");
        print("nodes:");
        for (const n of nodes) {
          print(`  ${n.name.padEnd(6)}  ${n.endpoint.padEnd(12)}  ${backendName(n.backend)}`);
        }
        print("");
        const pods = await progress(
          `${options.nodes * options.pods} pods attached through the CNI plugin`,
          async () => {
            const perNode = await Promise.all(nodes.map(async (node) => {
              const out: LabPod[] = [];
              for (let j = 1; j <= options.pods; j++) out.push(await lab.addPod(node, j));
              return out;
            }));
            return perNode.flat();
          },
        );
        print("");
        print("pods:");
        const width = Math.max(4, ...pods.map((p) => p.name.length));
        for (const p of pods) {
          print(`  ${p.name.padEnd(width)}  ${p.node.padEnd(6)}  ${p.addresses.join("  ")}`);
        }
        print("");

        const matrix = await progress(
          "reachability: every pod pings every other pod over IPv4 and IPv6",
          () => reachability(lab, pods),
        );
        printMatrix(pods, matrix, print);

        const v4 = count(matrix, 0);
        const v6 = count(matrix, 1);
        if (options.keep) {
          keepNow = true;
          await Deno.mkdir(stateFile.replace(/\/[^/]*$/, ""), { recursive: true, mode: 0o700 });
          await lab.save(stateFile);
          step++;
          print(`[${step}/${steps}] kept running (state in ${stateFile})`);
          printLookAround(lab.state, print);
        } else {
          await progress("tear down: processes, namespaces, files", () => lab.teardown());
        }
        const ok = v4[0] === v4[1] && v6[0] === v6[1];
        print(
          `summary: ${v4[0]}/${v4[1]} pod pairs reachable over IPv4, ${v6[0]}/${
            v6[1]
          } over IPv6; ${pods.length} pods on ${nodes.length} nodes; ${
            secs(performance.now() - t0)
          }${ok ? "" : " — SOME PAIRS FAILED"}`,
        );
        return { code: ok ? 0 : 1, reachable: { v4, v6 } };
      })(),
      onInterrupt,
    ]);
  } catch (err) {
    if (interrupted) return { code: 130 };
    print(`wgcni demo: failed: ${err instanceof Error ? err.message : String(err)}`);
    print(`wgcni demo: logs were in ${lab.state.dir}; cleaning up`);
    return { code: 1 };
  } finally {
    if (interrupted) await stopping;
    else if (!keepNow) await lab.teardown();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

/** [from][to] → [v4 ok, v6 ok]; undefined on the diagonal. */
type Matrix = ([boolean, boolean] | undefined)[][];

async function reachability(lab: Lab, pods: readonly LabPod[]): Promise<Matrix> {
  const matrix: Matrix = pods.map(() => pods.map(() => undefined));
  const jobs: (() => Promise<void>)[] = [];
  pods.forEach((from, i) =>
    pods.forEach((to, j) => {
      if (i === j) return;
      jobs.push(async () => {
        const [a4, a6] = to.addresses;
        const r4 = a4 ? await pingPatiently(lab, from, a4) : false;
        const r6 = a6 ? await pingPatiently(lab, from, a6) : false;
        (matrix[i] as ([boolean, boolean] | undefined)[])[j] = [r4, r6];
      });
    })
  );
  await pool(jobs, 8);
  return matrix;
}

/**
 * The first packets may wait for a handshake, and one that was dropped (a
 * peer learned a moment before the other side knew it) is retried by
 * WireGuard after five seconds; up to four tries absorb that.
 */
async function pingPatiently(lab: Lab, from: LabPod, to: string): Promise<boolean> {
  for (let i = 0; i < 4; i++) if (await lab.ping(from, to)) return true;
  return false;
}

async function pool(jobs: (() => Promise<void>)[], width: number): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) await (jobs[next++] as () => Promise<void>)();
  }));
}

function count(matrix: Matrix, family: 0 | 1): [number, number] {
  let ok = 0, all = 0;
  for (const row of matrix) {
    for (const cell of row) {
      if (!cell) continue;
      all++;
      if (cell[family]) ok++;
    }
  }
  return [ok, all];
}

function printMatrix(pods: readonly LabPod[], matrix: Matrix, print: (l: string) => void) {
  const short = pods.map((p) => p.name.replace(/^node(\d+)-pod(\d+)$/, "n$1p$2"));
  const w = Math.max(5, ...short.map((s) => s.length));
  print("  from\\to " + short.map((s) => s.padStart(w)).join(" "));
  matrix.forEach((row, i) => {
    const cells = row.map((c) =>
      (c === undefined ? "-" : c[0] && c[1] ? "ok" : c[0] ? "v4" : c[1] ? "v6" : "FAIL").padStart(w)
    );
    print(`  ${(short[i] as string).padEnd(7)} ${cells.join(" ")}`);
  });
  print("  (ok: IPv4 and IPv6; v4/v6: only that family; FAIL: neither)");
  print("");
}

function printLookAround(state: LabState, print: (l: string) => void) {
  const n1 = state.nodes[0];
  if (!n1) return;
  print("look around:");
  print(`  ip netns exec ${n1.netns} wgcni status --socket ${n1.socket}`);
  print(`  ip netns exec ${n1.netns} wg show ${n1.iface}`);
  const pod = n1.pods[0];
  if (pod) print(`  ip netns exec ${pod.netns} ip addr show eth0`);
  print("remove it with: wgcni demo --down");
}

async function down(
  runner: Runner,
  stateFile: string,
  print: (l: string) => void,
): Promise<number> {
  let state: LabState;
  try {
    state = JSON.parse(await Deno.readTextFile(stateFile)) as LabState;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      print("wgcni demo: no demo cluster is running");
      return 0;
    }
    print(`wgcni demo: cannot read ${stateFile}: ${(err as Error).message}`);
    return 1;
  }
  const problems = await teardownState(runner, state);
  await Deno.remove(stateFile).catch(() => {});
  if (problems.length) {
    for (const p of problems) print(`wgcni demo: could not remove ${p}`);
    return 1;
  }
  print(`wgcni demo: removed demo cluster ${state.id} (${state.nodes.length} nodes)`);
  return 0;
}

async function preflight(runner: Runner): Promise<string | undefined> {
  if (Deno.uid() !== 0) {
    return "needs root to create network namespaces; run it as root (e.g. sudo wgcni demo)";
  }
  const missing: string[] = [];
  for (const t of TOOLS) {
    const r = await runner.exec(["sh", "-c", `command -v ${t}`]);
    if (r.code !== 0) missing.push(t);
  }
  // wireguard-go only where the kernel has no WireGuard.
  const wgGo = await runner.exec(["sh", "-c", "command -v wireguard-go"]);
  if (wgGo.code !== 0 && !(await kernelHasWireGuard(runner))) missing.push("wireguard-go");
  if (missing.length) {
    return `missing ${
      missing.join(", ")
    }; install them with: apt-get install -y --no-install-recommends wireguard-tools wireguard-go iproute2 nftables iputils-ping util-linux bash`;
  }
  return undefined;
}

/** Whether a kernel WireGuard link can be made (tried in a throwaway namespace). */
async function kernelHasWireGuard(runner: Runner): Promise<boolean> {
  const ns = `wgd-probe-${Deno.pid}`;
  if ((await runner.exec(["ip", "netns", "add", ns])).code !== 0) return false;
  try {
    const r = await runner.exec(["ip", "link", "add", "wgprobe", "type", "wireguard"], {
      netns: ns,
    });
    return r.code === 0;
  } finally {
    await runner.exec(["ip", "netns", "del", ns]);
  }
}

/** How a node's WireGuard backend reads in the demo's output. */
export function backendName(backend: string): string {
  return backend === "kernel"
    ? "kernel WireGuard"
    : backend === "userspace"
    ? "wireguard-go"
    : `backend ${backend || "unknown"}`;
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
