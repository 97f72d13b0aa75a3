/**
 * Nodes behind NAT (`deno task bench nat`), on the lab's router namespaces
 * doing nftables masquerade:
 *
 * - time from `node join` to a pod on the new node answering a pod on an
 *   earlier node: for a node with an endpoint of its own (the reference), a
 *   node behind a port-keeping NAT reached by another such node (direct),
 *   and a node behind a port-picking NAT reached by another such node
 *   (through the relay: that includes the grace before relaying);
 * - TCP throughput between pods over the relay against the direct path
 *   between two NAT'd nodes, measured in the same run, and the fragments
 *   either made (none: the relay adds no header).
 */
import type { BenchRow } from "./_report.ts";
import { fragCounters, fragDelta, inLab, iperf, say, waitReachable } from "./dataplane.ts";
import type { Lab, LabNodeOptions, LabNodeState, LabPod } from "../modes/demo/lab.ts";

const RELAY = "192.0.2.1:7600";

/** Joins node `index` and adds a pod there; ms until `from` reaches that pod. */
async function joinTime(
  lab: Lab,
  index: number,
  options: LabNodeOptions,
  from: LabPod | undefined,
): Promise<{ node: LabNodeState; pod: LabPod; ms: number }> {
  const t0 = performance.now();
  const node = await lab.addNode(index, options);
  const pod = await lab.addPod(node, 1);
  if (from !== undefined) await waitReachable(from.netns, pod.addresses[0]!, 120_000);
  return { node, pod, ms: performance.now() - t0 };
}

export async function run(): Promise<BenchRow[]> {
  return await inLab("nat", "t", async (lab, scratch) => {
    await lab.startCluster({ args: ["--relay-listen", RELAY, "--relay-ports", "16"] });
    const rows: BenchRow[] = [];
    const first = await joinTime(lab, 1, {}, undefined);
    const pub = await joinTime(lab, 2, {}, first.pod);
    const cone1 = await joinTime(lab, 3, { nat: "cone" }, undefined);
    const cone2 = await joinTime(lab, 4, { nat: "cone" }, cone1.pod);
    const rand1 = await joinTime(lab, 5, { nat: "random" }, undefined);
    const rand2 = await joinTime(lab, 6, { nat: "random" }, rand1.pod);
    say(
      `nat: join → path ${pub.ms.toFixed(0)} / ${cone2.ms.toFixed(0)} / ${rand2.ms.toFixed(0)} ms`,
    );
    rows.push({
      bench: "nat",
      name: "join → working path, both behind port-keeping NATs (direct)",
      value: cone2.ms,
      unit: "ms",
      reference: "a node with its own endpoint",
      referenceValue: pub.ms,
    });
    rows.push({
      bench: "nat",
      name: "join → working path, both behind port-picking NATs (relayed)",
      value: rand2.ms,
      unit: "ms",
      reference: "a node with its own endpoint",
      referenceValue: pub.ms,
      note: "includes the 20 s without a handshake before a pair is relayed",
    });
    const namespaces = [
      lab.underlay,
      ...[cone1, cone2, rand1, rand2].flatMap((x) => [
        x.node.netns,
        x.node.router!,
      ]),
    ];
    const direct = await iperf(scratch, cone2.pod.netns, cone1.pod.netns, cone2.pod.addresses[0]!);
    const before = await fragCounters(namespaces);
    const relayed = await iperf(scratch, rand2.pod.netns, rand1.pod.netns, rand2.pod.addresses[0]!);
    const frags = fragDelta(before, await fragCounters(namespaces));
    say(`nat: direct ${direct.gbps.toFixed(2)} Gbit/s, relayed ${relayed.gbps.toFixed(2)} Gbit/s`);
    rows.push({
      bench: "nat",
      name: "pod → pod TCP through the relay",
      value: relayed.gbps,
      unit: "Gbit/s",
      reference: "direct between two NAT'd nodes",
      referenceValue: direct.gbps,
      note: relayed.error || direct.error
        ? `iperf: ${relayed.error ?? ""} ${direct.error ?? ""}`.trim()
        : "both on the hub path (pods of NAT'd nodes get no direct pod paths): 3 WireGuard encryptions, " +
          "the daemons of 6 nodes on 2 cores",
    });
    rows.push({
      bench: "nat",
      name: "fragments made or reassembled on the relayed path",
      value: frags.total,
      unit: "packets",
      ...(frags.where.length ? { note: frags.where.join(", ") } : {}),
    });
    return rows;
  });
}

if (import.meta.main) {
  for (const r of await run()) say(JSON.stringify(r));
}
