/**
 * Density: 20 and 100 pods on one lab node, attached through the real CNI
 * path. Memory per pod (the pods' wireguard-go daemons plus the node's
 * growth: node manager and its wgcni0 daemon), processes and threads per
 * pod, and the node manager's RSS, idle and under load (every pod pings a
 * neighbour pod at 10 pkt/s). References measured in the same run: one bare
 * wireguard-go interface in an empty namespace (idle), and one end of a
 * hand-built wireguard-go tunnel carrying the same ping (load).
 * Needs root (network namespaces). WGCNI_BENCH_DENSITY="20,100" sets the counts.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable, pct } from "./_report.ts";
import type { LabNodeState, LabPod } from "../modes/demo/lab.ts";
import { generateKeyPair, WireGuardControl } from "../lib/wireguard/mod.ts";
import {
  buildRefPair,
  inLab,
  type ProcMem,
  procMem,
  procsInNetns,
  programPid,
  runner,
  say,
  sleep,
  waitReachable,
} from "./dataplane.ts";

const COUNTS = (Deno.env.get("WGCNI_BENCH_DENSITY") ?? "20,100").split(",").map(Number)
  .filter((n) => n > 1).sort((a, b) => a - b);
/** ADDs in flight while filling the node. */
const CONCURRENCY = 4;
/** Length of the load window (each ping runs this long), and the part before sampling. */
const LOAD_S = 10;
const WARM_S = 2;
const CLK_TCK = 100;
const MiB = 1024;

interface Sample {
  pods: number;
  /** Sums over the pods' wireguard-go daemons, KiB. */
  podRss: number;
  podPss: number;
  podProcs: number;
  podThreads: number;
  podTicks: number;
  /** The node manager (Deno) and the node interface's wireguard-go daemon. */
  mgrRss: number;
  mgrPss: number;
  mgrTicks: number;
  nodeWgRss: number;
  nodeWgPss: number;
  nodeWgTicks: number;
}

async function sample(node: LabNodeState, mgrPid: number, pods: number): Promise<Sample> {
  const s: Sample = {
    pods,
    podRss: 0,
    podPss: 0,
    podProcs: 0,
    podThreads: 0,
    podTicks: 0,
    mgrRss: 0,
    mgrPss: 0,
    mgrTicks: 0,
    nodeWgRss: 0,
    nodeWgPss: 0,
    nodeWgTicks: 0,
  };
  // A pod's wireguard-go is created in the node namespace and stays there
  // (its TUN moved into the pod); the node's own interface is the one named
  // after it.
  for (const p of await procsInNetns(node.netns, "wireguard-go")) {
    const m = await procMem(p.pid);
    if (p.argv[1] === node.iface) {
      s.nodeWgRss = m.rss;
      s.nodeWgPss = m.pss;
      s.nodeWgTicks = m.cpuTicks;
    } else {
      s.podProcs++;
      s.podRss += m.rss;
      s.podPss += m.pss;
      s.podThreads += m.threads;
      s.podTicks += m.cpuTicks;
    }
  }
  const mgr = await procMem(mgrPid);
  s.mgrRss = mgr.rss;
  s.mgrPss = mgr.pss;
  s.mgrTicks = mgr.cpuTicks;
  return s;
}

/** Runs `fn` over `items` with at most `n` in flight. */
async function pool<T>(items: readonly T[], n: number, fn: (x: T) => Promise<void>) {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

/** What one state of the node (idle, load) is measured against, and the rows' notes. */
interface StateComparison {
  state: "idle" | "load";
  /** The processes row's name (the idle one's carries no state). */
  procsName: string;
  /** The reference process, as the memory and thread rows name it. */
  reference: string;
  procsReference: string;
  mem: ProcMem;
  procs: number;
  notes: { rss: string; pss?: string; mgr: string };
}

const v4 = (p: LabPod) => p.addresses.find((a) => !a.includes(":"))!;

export async function run(): Promise<BenchRow[]> {
  if (Deno.uid() !== 0) {
    return [{ bench: "density", name: "skipped", value: NaN, unit: "", note: "needs root" }];
  }
  return await inLab("density", "s", async (lab, scratch) => {
    await lab.startCluster();
    const node = await lab.addNode(1);
    const mgrPid = await programPid(node.pid);
    const rows: BenchRow[] = [];
    const row = (r: Omit<BenchRow, "bench">): BenchRow => ({ bench: "density", ...r });

    // References: one bare interface (key and port, no peer, no traffic) in
    // an empty namespace, and a tunnel whose one end carries the pods' load.
    const bareNs = await scratch.netns("0");
    const bareName = `${scratch.prefix.replaceAll("-", "")}0`;
    const wg = new WireGuardControl(runner);
    await wg.create(bareName, { netns: bareNs });
    await scratch.noteDaemons();
    await wg.configure(bareName, {
      privateKey: (await generateKeyPair()).privateKey,
      listenPort: 51820,
    }, { netns: bareNs });
    await runner.run(["ip", "link", "set", bareName, "up"], { netns: bareNs });
    // The node interface has the pods' MTU; the reference tunnel gets the same.
    const podMtu = JSON.parse(
      await runner.run(["ip", "-j", "link", "show", "dev", node.iface], { netns: node.netns }),
    )[0].mtu as number;
    const ref = await buildRefPair(scratch, "l", { wgMtu: podMtu });
    await waitReachable(ref.a, ref.tunnelB!);
    const refPid = async (ns: string) => (await procsInNetns(ns, "wireguard-go"))[0]?.pid ?? 0;
    const bare = await procMem(await refPid(bareNs));
    const bareProcs = (await procsInNetns(bareNs, "wireguard-go")).length;
    const loadedPid = await refPid(ref.a);

    // The node without pods is the baseline for the node's growth.
    await sleep(2000);
    const base = await sample(node, mgrPid, 0);
    say(
      `density: bare wireguard-go RSS ${(bare.rss / MiB).toFixed(1)} MiB, node manager ${
        (base.mgrRss / MiB).toFixed(1)
      } MiB, node wgcni0 daemon ${(base.nodeWgRss / MiB).toFixed(1)} MiB`,
    );
    const pods: LabPod[] = [];
    for (const n of COUNTS) {
      const t0 = performance.now();
      const todo = Array.from({ length: n - pods.length }, (_, i) => pods.length + 1 + i);
      await pool(todo, CONCURRENCY, async (i) => {
        pods.push(await lab!.addPod(node, i));
      });
      pods.sort((a, b) => a.name.localeCompare(b.name, "en", { numeric: true }));
      const addS = (performance.now() - t0) / 1000;
      await sleep(3000);
      const idle = await sample(node, mgrPid, n);

      // First contact: every pod reaches its neighbour once (handshakes
      // pod → wgcni0 and wgcni0 → neighbour), so the load window below is
      // steady state.
      const c0 = performance.now();
      const contactMs: number[] = [];
      await pool(pods.map((p, i) => [p, pods[(i + 1) % n]!] as const), 8, async ([p, q]) => {
        const s0 = performance.now();
        await waitReachable(p.netns, v4(q));
        contactMs.push(performance.now() - s0);
      });
      const contactS = (performance.now() - c0) / 1000;

      // Load: every pod pings its neighbour pod (on this node: pod wg →
      // wgcni0 → pod wg) at 10 pkt/s; the reference tunnel end pings its peer.
      const pings = pods.map((p, i) =>
        scratch.spawn(
          ["ping", "-n", "-q", "-i", "0.1", "-w", String(LOAD_S), v4(pods[(i + 1) % n]!)],
          p.netns,
          true,
        )
      );
      const refPing = scratch.spawn(
        ["ping", "-n", "-q", "-i", "0.1", "-w", String(LOAD_S), ref.tunnelB!],
        ref.a,
        true,
      );
      await sleep(WARM_S * 1000);
      const l0 = await sample(node, mgrPid, n);
      const r0 = await procMem(loadedPid);
      const windowS = LOAD_S - WARM_S - 1;
      await sleep(windowS * 1000);
      const load = await sample(node, mgrPid, n);
      const r1 = await procMem(loadedPid);
      let sent = 0, received = 0, lossy = 0, worst = 0, refLost = 0;
      for (const c of [...pings, refPing]) {
        const out = new TextDecoder().decode((await c.output()).stdout);
        const m = out.match(/(\d+) packets transmitted, (\d+) received/);
        const lost = Number(m?.[1] ?? 0) - Number(m?.[2] ?? 0);
        if (c === refPing) {
          refLost = lost;
          continue;
        }
        sent += Number(m?.[1] ?? 0);
        received += Number(m?.[2] ?? 0);
        if (lost > 0) lossy++;
        worst = Math.max(worst, lost);
      }
      say(
        `density: ${n} pods added in ${addS.toFixed(1)} s; idle ${
          (idle.podRss / MiB).toFixed(0)
        } MiB in ${idle.podProcs} daemons; load loss ${sent - received}/${sent}`,
      );

      const growth = (s: Sample) => ({
        rss: s.mgrRss - base.mgrRss + s.nodeWgRss - base.nodeWgRss,
        pss: s.mgrPss - base.mgrPss + s.nodeWgPss - base.nodeWgPss,
      });
      const perPod = (s: Sample) => ({
        rss: (s.podRss + growth(s).rss) / n / MiB,
        pss: (s.podPss + growth(s).pss) / n / MiB,
      });
      const memNote = (s: Sample) =>
        `(Σ ${s.podProcs} pod wireguard-go RSS ${(s.podRss / MiB).toFixed(1)} MiB + node manager ${
          ((s.mgrRss - base.mgrRss) / MiB).toFixed(1)
        } MiB + wgcni0 daemon ${
          ((s.nodeWgRss - base.nodeWgRss) / MiB).toFixed(1)
        } MiB growth) / ${n}`;
      const procsNote = (s: Sample) =>
        s.podProcs === n
          ? "one wireguard-go per pod; no other per-pod process"
          : `${s.podProcs} pod daemons for ${n} pods: not one per pod`;
      const LOAD = "each pod pings a neighbour pod at 10 pkt/s";
      /** Memory, processes, threads and the node manager's RSS in one state, beside a reference. */
      const stateRows = (s: Sample, c: StateComparison): BenchRow[] => {
        const per = perPod(s);
        return [
          ...(["rss", "pss"] as const).map((m) =>
            row({
              name: `${n} pods, ${c.state}: memory per pod (${m.toUpperCase()})`,
              value: per[m],
              unit: "MiB",
              reference: `${c.reference}, ${m.toUpperCase()}`,
              referenceValue: c.mem[m] / MiB,
              ...(c.notes[m] === undefined ? {} : { note: c.notes[m] }),
            })
          ),
          row({
            name: c.procsName,
            value: s.podProcs / n,
            unit: "",
            reference: c.procsReference,
            referenceValue: c.procs,
            note: procsNote(s),
          }),
          row({
            name: `${n} pods, ${c.state}: threads per pod`,
            value: s.podThreads / n,
            unit: "",
            reference: c.reference,
            referenceValue: c.mem.threads,
          }),
          row({
            name: `${n} pods, ${c.state}: node manager RSS`,
            value: s.mgrRss / MiB,
            unit: "MiB",
            reference: "node manager with 0 pods",
            referenceValue: base.mgrRss / MiB,
            note: c.notes.mgr,
          }),
        ];
      };
      const cpuPct = ((load.podTicks - l0.podTicks) + (load.nodeWgTicks - l0.nodeWgTicks) +
        (load.mgrTicks - l0.mgrTicks)) / CLK_TCK / windowS / n * 100;
      const refCpuPct = (r1.cpuTicks - r0.cpuTicks) / CLK_TCK / windowS * 100;
      rows.push(
        row({
          name: `${n} pods: ADD time, ${CONCURRENCY} at a time`,
          value: addS,
          unit: "s",
          ...(todo.length < n ? { note: `${n - todo.length} pods already there` } : {}),
        }),
        row({
          name: `${n} pods: first contact with the neighbour pod, p50 per pod`,
          value: pct(contactMs, 50),
          unit: "ms",
          note: `max ${pct(contactMs, 100).toFixed(0)} ms; ${
            contactMs.filter((t) => t >= 4500).length
          } pod(s) waited ≥ 1 WireGuard handshake retry (5 s); all ${n} in ${
            contactS.toFixed(1)
          } s, 8 neighbours at a time, one ping per s until answered`,
        }),
        ...stateRows(idle, {
          state: "idle",
          procsName: `${n} pods: processes per pod`,
          reference: "one bare wireguard-go interface",
          procsReference: "one bare wireguard-go interface",
          mem: bare,
          procs: bareProcs,
          notes: {
            rss: memNote(idle),
            pss: "PSS counts pages shared by the daemons (the binary) once",
            mgr: `wgcni0 daemon ${(idle.nodeWgRss / MiB).toFixed(1)} MiB (0 pods: ${
              (base.nodeWgRss / MiB).toFixed(1)
            } MiB)`,
          },
        }),
        ...stateRows(load, {
          state: "load",
          procsName: `${n} pods, load: processes per pod`,
          reference: "wireguard-go tunnel end under the same ping",
          procsReference: "wireguard-go tunnel end",
          mem: r1,
          procs: (await procsInNetns(ref.a, "wireguard-go")).length,
          notes: {
            rss: `${LOAD}; ${memNote(load)}`,
            mgr: `wgcni0 daemon ${(load.nodeWgRss / MiB).toFixed(1)} MiB`,
          },
        }),
        row({
          name: `${n} pods, load: CPU per pod (pod daemon + share of wgcni0 and node manager)`,
          value: cpuPct,
          unit: "% core",
          reference: "wireguard-go tunnel end under the same ping",
          referenceValue: refCpuPct,
          note: `over ${windowS} s; a pod's packet is encrypted twice (pod → wgcni0 → pod)`,
        }),
        row({
          name: `${n} pods, load: ping loss`,
          value: sent ? (sent - received) / sent * 100 : NaN,
          unit: "%",
          note:
            `${
              sent - received
            }/${sent} lost over ${LOAD_S} s after first contact; ${lossy} pod(s) ` +
            `lost any, worst ${worst}; reference tunnel lost ${refLost}`,
        }),
      );
    }
    return rows;
  });
}

if (import.meta.main) {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(await run()) + "\n"));
}
