/**
 * Key rotation (`deno task bench rotation`): pings lost while a node's key,
 * and then its pods' keys, rotate under pod → pod flows across two nodes,
 * both ways, at 20 packets a second (the issue's flow) and at 1,000. The
 * pods talk through the nodes (`--pod-paths hub`), so every packet crosses
 * the tunnel whose key changes. The reference is the same flow, in the same
 * run, with no rotation: what the lab loses anyway.
 */
import type { BenchRow } from "./_report.ts";
import { inLab, say, waitReachable } from "./dataplane.ts";
import type { Lab, LabNodeState, LabPod } from "../modes/demo/lab.ts";
const ROTATIONS = 5;
const LEAD_S = 2;

/** Packets lost in both directions over one window, with `during` run half a second in. */
async function lostBothWays(
  lab: Lab,
  a: LabPod,
  b: LabPod,
  perSecond: number,
  during: () => Promise<void>,
): Promise<number> {
  const seconds = LEAD_S + 3;
  const options = { count: Math.round(seconds * perSecond), intervalS: 1 / perSecond, waitS: 5 };
  const flows = Promise.all([
    lab.pingFlow(a, b.addresses[0]!, options),
    lab.pingFlow(b, a.addresses[0]!, options),
  ]);
  await new Promise((r) => setTimeout(r, 500));
  await during();
  return (await flows).reduce((n, [sent, got]) => n + sent - got, 0);
}

async function rotate(lab: Lab, node: LabNodeState): Promise<void> {
  const r = await lab.cli(["node", "rotate-key", "--pods", "--socket", node.socket], node.netns);
  if (r.code !== 0) throw new Error(`rotate-key failed: ${r.stderr}`);
}

export async function run(): Promise<BenchRow[]> {
  return await inLab("rotation", "k", async (lab) => {
    await lab.startCluster();
    const joinArgs = ["--pod-paths", "hub", "--key-switch-lead", `${LEAD_S}s`];
    const n1 = await lab.addNode(1, { joinArgs });
    const n2 = await lab.addNode(2, { joinArgs });
    const a = await lab.addPod(n1, 1);
    const b = await lab.addPod(n2, 1);
    await waitReachable(a.netns, b.addresses[0]!, 60_000);
    await waitReachable(b.netns, a.addresses[0]!, 60_000);
    const rows: BenchRow[] = [];
    for (const perSecond of [20, 1000]) {
      let reference = 0, rotated = 0, worst = 0;
      for (let i = 0; i < ROTATIONS; i++) {
        reference += await lostBothWays(lab, a, b, perSecond, () => Promise.resolve());
        const lost = await lostBothWays(lab, a, b, perSecond, () => rotate(lab, n1));
        rotated += lost;
        worst = Math.max(worst, lost);
      }
      say(`rotation: ${perSecond} pkt/s, lost ${rotated} (worst ${worst}) vs ${reference}`);
      rows.push({
        bench: "rotation",
        name:
          `pings lost per rotation of a node's key and its pods' keys, ${perSecond} pkt/s both ways`,
        value: rotated / ROTATIONS,
        unit: "packets",
        reference: "the same flows, no rotation",
        referenceValue: reference / ROTATIONS,
        note: `${ROTATIONS} rotations; worst ${worst}; ${
          Math.round((LEAD_S + 3) * perSecond * 2)
        } pings per window`,
      });
    }
    return rows;
  });
}

if (import.meta.main) {
  for (const r of await run()) say(JSON.stringify(r));
}
