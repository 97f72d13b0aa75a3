/**
 * CNI ADD and DEL latency on one node, one at a time and many at once:
 * wgcni (the real plugin executable and node manager, in a lab namespace)
 * against Debian's reference `ptp` + `host-local`, in the same run.
 * Needs root (network namespaces). WGCNI_BENCH_PODS and WGCNI_BENCH_BURST
 * lower the counts.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable, pct } from "./_report.ts";
import { Lab } from "../modes/demo/lab.ts";
import { SystemRunner } from "../lib/ip/runner.ts";
import { getLogger } from "../lib/log.ts";

const N = Number(Deno.env.get("WGCNI_BENCH_PODS") ?? 200);
const BURST = Number(Deno.env.get("WGCNI_BENCH_BURST") ?? 100);
const runner = new SystemRunner();

/** One plugin implementation: how to add and delete pod `i` in namespace `ns`. */
interface Target {
  add(i: number, ns: string): Promise<{ code: number; stdout: string }>;
  del(i: number, ns: string): Promise<{ code: number; stdout: string }>;
}

interface Measured {
  addMs: number[];
  delMs: number[];
  burstAddMs: number[];
  burstDelMs: number[];
  burstAddTotal: number;
  burstDelTotal: number;
  failures: number;
  duplicates: number;
  /** The first failure messages, by count. */
  errors: Map<string, number>;
}

async function measure(
  target: Target,
  prefix: string,
  ids: { namespaces: string[] },
): Promise<Measured> {
  let made = 0;
  const mkns = async (n: number) => {
    const names = Array.from({ length: n }, () => `${prefix}${made++}`);
    for (const name of names) {
      await runner.run(["ip", "netns", "add", name]);
      ids.namespaces.push(name);
    }
    return names;
  };
  const m: Measured = {
    addMs: [],
    delMs: [],
    burstAddMs: [],
    burstDelMs: [],
    burstAddTotal: 0,
    burstDelTotal: 0,
    failures: 0,
    duplicates: 0,
    errors: new Map(),
  };
  const fail = (r: { stdout: string }) => {
    m.failures++;
    const msg = r.stdout.trim().slice(0, 160);
    m.errors.set(msg, (m.errors.get(msg) ?? 0) + 1);
  };
  const seqNs = await mkns(N);
  const seen = new Set<string>();
  for (const [i, ns] of seqNs.entries()) {
    const t0 = performance.now();
    const r = await target.add(i, ns);
    m.addMs.push(performance.now() - t0);
    if (r.code !== 0) fail(r);
    else {
      for (const ip of (JSON.parse(r.stdout).ips ?? []) as { address: string }[]) {
        if (seen.has(ip.address)) m.duplicates++;
        seen.add(ip.address);
      }
    }
  }
  for (const [i, ns] of seqNs.entries()) {
    const t0 = performance.now();
    const d = await target.del(i, ns);
    if (d.code !== 0) fail(d);
    m.delMs.push(performance.now() - t0);
  }
  const burstNs = await mkns(BURST);
  const burstSeen = new Set<string>();
  let t0 = performance.now();
  const adds = await Promise.all(burstNs.map(async (ns, i) => {
    const s = performance.now();
    const r = await target.add(N + i, ns);
    m.burstAddMs.push(performance.now() - s);
    return r;
  }));
  m.burstAddTotal = performance.now() - t0;
  for (const r of adds) {
    if (r.code !== 0) fail(r);
    else {
      for (const ip of (JSON.parse(r.stdout).ips ?? []) as { address: string }[]) {
        if (burstSeen.has(ip.address)) m.duplicates++;
        burstSeen.add(ip.address);
      }
    }
  }
  t0 = performance.now();
  await Promise.all(burstNs.map(async (ns, i) => {
    const s = performance.now();
    const d = await target.del(N + i, ns);
    if (d.code !== 0) fail(d);
    m.burstDelMs.push(performance.now() - s);
  }));
  m.burstDelTotal = performance.now() - t0;
  return m;
}

/** Where a wgcni ADD's time goes (measured in the node manager's step log). */
function addCost(backend: string): string {
  return backend === "kernel"
    ? "each ADD starts the plugin (a Deno process), then the node manager runs ip three times (create, move into the pod, one batch inside it) and wg four times (key and first peer, the port once up, the node-side peer, the keep-alive); the move waits for the kernel (serialised under the RTNL lock when ADDs overlap); under emulation a Deno process slows far more than ptp's Go binary, so the guest's ratio overstates it"
    : "each ADD starts the plugin (a Deno process), one wireguard-go per pod, and moves its TUN into the pod (17–20 ms in the kernel, serialised under the RTNL lock when ADDs overlap)";
}

/** The aimed-for ratio to ptp: 2× on kernel WireGuard, 3× on wireguard-go. */
function aimRatio(backend: string): number {
  return backend === "kernel" ? 2 : 3;
}

function rows(w: Measured, p: Measured, backend: string): BenchRow[] {
  const on = backend === "kernel" ? "kernel WireGuard" : "wireguard-go";
  const row = (name: string, a: number, b: number, unit = "ms", note?: string): BenchRow => ({
    bench: "cni",
    name: `${name}, ${on}`,
    value: a,
    unit,
    reference: "ptp + host-local",
    referenceValue: b,
    ...(note ? { note } : {}),
  });
  const aim = (met: boolean, what: string) =>
    met ? `${what}: met` : `${what}: NOT met; ${addCost(backend)}`;
  const k = aimRatio(backend);
  return [
    row(
      `ADD p50, one at a time (${N})`,
      pct(w.addMs, 50),
      pct(p.addMs, 50),
      "ms",
      aim(pct(w.addMs, 50) <= k * pct(p.addMs, 50), `aim ≤ ${k}× ptp`),
    ),
    row(`ADD p99, one at a time (${N})`, pct(w.addMs, 99), pct(p.addMs, 99)),
    row(`DEL p50, one at a time (${N})`, pct(w.delMs, 50), pct(p.delMs, 50)),
    row(`DEL p99, one at a time (${N})`, pct(w.delMs, 99), pct(p.delMs, 99)),
    row(
      `ADD, ${BURST} at once: total`,
      w.burstAddTotal,
      p.burstAddTotal,
      "ms",
      aim(w.burstAddTotal <= k * p.burstAddTotal, `aim ≤ ${k}× ptp`),
    ),
    row(
      `ADD, ${BURST} at once: p99`,
      pct(w.burstAddMs, 99),
      pct(p.burstAddMs, 99),
      "ms",
      aim(pct(w.burstAddMs, 99) <= 1000, "aim ≤ 1000 ms"),
    ),
    row(`DEL, ${BURST} at once: total`, w.burstDelTotal, p.burstDelTotal),
    row("failures", w.failures, p.failures, "", `must be 0${errorNote(w)}`),
    row("duplicate addresses", w.duplicates, p.duplicates, "", "must be 0"),
  ];
}

function errorNote(m: Measured): string {
  const top = [...m.errors].sort((a, b) => b[1] - a[1]).slice(0, 2);
  return top.map(([msg, n]) => `; ${n}× ${msg.replaceAll("|", "/")}`).join("");
}

export async function run(): Promise<BenchRow[]> {
  if (Deno.uid() !== 0) {
    return [{
      bench: "cni",
      name: "skipped",
      value: NaN,
      unit: "",
      note: "needs root for network namespaces",
    }];
  }
  const lab = await Lab.create(runner, getLogger("bench"));
  const hostNs = `wgd-${lab.state.id}-ptphost`;
  const dataDir = `${lab.state.dir}/host-local`;
  try {
    await lab.startCluster();
    const node = await lab.addNode(1);
    await runner.run(["ip", "netns", "add", hostNs]);
    lab.state.namespaces.push(hostNs);
    await runner.run(["ip", "link", "set", "lo", "up"], { netns: hostNs });
    const wgcni: Target = {
      add: (i, ns) =>
        lab.plugin(node, "ADD", {
          containerId: `b${i}`,
          ifname: "eth0",
          netns: `/run/netns/${ns}`,
        }),
      del: (i, ns) =>
        lab.plugin(node, "DEL", {
          containerId: `b${i}`,
          ifname: "eth0",
          netns: `/run/netns/${ns}`,
        }),
    };
    const ptpConf = JSON.stringify({
      cniVersion: "1.0.0",
      name: "bench",
      type: "ptp",
      ipMasq: false,
      ipam: { type: "host-local", ranges: [[{ subnet: "10.99.0.0/16" }]], dataDir },
    });
    const ptpRun = (cmd: string) => (i: number, ns: string) =>
      runner.exec(["/usr/lib/cni/ptp"], {
        netns: hostNs,
        stdin: ptpConf,
        env: {
          CNI_COMMAND: cmd,
          CNI_CONTAINERID: `p${i}`,
          CNI_NETNS: `/run/netns/${ns}`,
          CNI_IFNAME: "eth0",
          CNI_PATH: "/usr/lib/cni",
        },
      });
    const ptp: Target = { add: ptpRun("ADD"), del: ptpRun("DEL") };
    const w = await measure(wgcni, `wgd-${lab.state.id}-w`, lab.state);
    const p = await measure(ptp, `wgd-${lab.state.id}-p`, lab.state);
    return rows(w, p, node.backend);
  } finally {
    await lab.teardown();
  }
}

if (import.meta.main) {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(await run()) + "\n"));
}
