/**
 * Hitless key rotation, on whichever WireGuard backend the machine has:
 * node1's key rotates while pods ping each other across nodes 20 times a
 * second both ways (pods talk through the nodes, `--pod-paths hub`, so that
 * every packet crosses the node tunnel whose key changes), and then its
 * pods' own keys rotate under the same flows; then a node
 * manager killed in the middle of a rotation finishes it when it starts
 * again. Afterwards the cluster, every node interface, the pods and the key
 * file hold the new key, and the old one is nowhere.
 */
import assert from "node:assert/strict";
import { eventually, labTest, scaled, SLOW_MACHINE } from "../_helpers/e2e.ts";
import type { Lab, LabNodeState, LabPod } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";

const runner = new SystemRunner();

/**
 * Seconds between pings: 20 a second, in time that scales with the machine
 * (in the emulated guest, where everything takes ten times as long, 2 a
 * second: a lost packet then stands for the same share of a node's work).
 */
const INTERVAL_S = scaled(50) / 1000;

/**
 * Packets a flow may lose per rotation. Each side drops what the other
 * sends from when it moves to the new key until the other has moved too:
 * one process start apart, which is a few milliseconds here but about a
 * second in the emulated guest (a process start there takes some 30 times
 * as long, more than the time scale), where a stall (WireGuard retrying a
 * handshake after 5 s) still shows as ten or more.
 */
const LOST_PER_ROTATION = SLOW_MACHINE ? 3 : 1;

/** How far ahead every node switches (the lab's nodes are slow in an emulated guest). */
const LEAD_S = Math.max(3, Math.round(scaled(1000) / 1000));

async function publicKey(node: LabNodeState): Promise<string> {
  return (await runner.run(["wg", "show", node.iface, "public-key"], { netns: node.netns })).trim();
}

/** A node interface's peers: key → allowed IPs. */
async function peersOf(node: LabNodeState): Promise<Map<string, string>> {
  const out = await runner.run(["wg", "show", node.iface, "allowed-ips"], { netns: node.netns });
  return new Map(
    out.split("\n").filter(Boolean).map((l) => {
      const [k, ...ips] = l.split(/\s+/);
      return [k!, ips.join(" ")];
    }),
  );
}

/** The peers of a pod's own interface (kernel: in the pod; wireguard-go: by its socket name). */
async function podPeers(node: LabNodeState, pod: LabPod): Promise<string[]> {
  const inPod = await runner.exec(["wg", "show", pod.ifname, "peers"], { netns: pod.netns });
  if (inPod.code === 0) return inPod.stdout.split("\n").filter(Boolean);
  const c = createLocalClient(node.socket);
  try {
    const pods = (await c.allocations()).pods as { containerId: string; nodeInterface: string }[];
    const wgName = pods.find((p) => p.containerId === pod.containerId)?.nodeInterface;
    assert.ok(wgName, `${pod.name} is not in ${node.name}'s allocations`);
    return (await runner.run(["wg", "show", wgName, "peers"])).split("\n").filter(Boolean);
  } finally {
    c.close();
  }
}

/** The pods' own keys as their node records them, by container id. */
async function podKeys(node: LabNodeState): Promise<Map<string, string>> {
  const c = createLocalClient(node.socket);
  try {
    const pods = (await c.allocations()).pods as { containerId: string; publicKey: string }[];
    return new Map(pods.map((p) => [p.containerId, p.publicKey]));
  } finally {
    c.close();
  }
}

interface Listed {
  name: string;
  publicKey: string;
  nextKey?: { publicKey: string; switchAt: number };
}

async function listed(lab: Lab, name: string): Promise<Listed> {
  const r = await lab.cli(["cluster", "node", "list", "--json", ...lab.adminFlags], lab.underlay);
  assert.equal(r.code, 0, r.stderr);
  const n = (JSON.parse(r.stdout) as Listed[]).find((x) => x.name === name);
  assert.ok(n, `${name} is listed`);
  return n;
}

/** Pings `seconds` long, 20 a second; a reply that waited in WireGuard's queue still counts. */
function flow(lab: Lab, from: LabPod, to: string, seconds: number): Promise<[number, number]> {
  return lab.pingFlow(from, to, {
    count: Math.round(seconds / INTERVAL_S),
    intervalS: INTERVAL_S,
    waitS: 5,
  });
}

/** The old key is gone from the cluster, every node, the pods and the key files; the new one holds. */
async function rotatedEverywhere(
  lab: Lab,
  node: LabNodeState,
  others: readonly LabNodeState[],
  pods: readonly LabPod[],
  from: string,
) {
  const to = await publicKey(node);
  assert.notEqual(to, from, `${node.name} has a new key`);
  const n = await listed(lab, node.name);
  assert.equal(n.publicKey, to, "the cluster holds the new key");
  assert.equal(n.nextKey, undefined, "and no rotation is under way");
  for (const o of others) {
    const peers = await peersOf(o);
    assert.ok(!peers.has(from), `${o.name} has no peer with the old key`);
    assert.match(
      peers.get(to) ?? "",
      /\//,
      `${o.name} routes ${node.name}'s subnets to the new key`,
    );
  }
  for (const p of pods) assert.deepEqual(await podPeers(node, p), [to], `${p.name}'s one peer`);
  const file = await Deno.readTextFile(`${node.dir}/keys/private.key`);
  const fromFile = await runner.run(["wg", "pubkey"], { stdin: file });
  assert.equal(fromFile.trim(), to, "the key file holds the new key");
  await assert.rejects(Deno.stat(`${node.dir}/keys/next.key`), Deno.errors.NotFound);
}

labTest(
  "hitless key rotation: under flows across nodes, and finished after a crash in the middle",
  async (lab, t) => {
    await lab.startCluster();
    const joinArgs = ["--pod-paths", "hub", "--key-switch-lead", `${LEAD_S}s`];
    const [n1, n2, n3] = await Promise.all(
      [1, 2, 3].map((i) => lab.addNode(i, { joinArgs })),
    ) as [LabNodeState, LabNodeState, LabNodeState];
    const a = await lab.addPod(n1, 1);
    const a2 = await lab.addPod(n1, 2);
    const b = await lab.addPod(n2, 1);
    const c = await lab.addPod(n3, 1);
    for (const [x, y] of [[a, b], [b, a], [c, a], [a2, c]] as const) {
      await eventually(`${x.name} → ${y.name}`, () => lab.ping(x, y.addresses[0]!), 30_000);
    }

    /** Runs `rotate-key` with `flags` under three flows; asserts at most `most` lost in each. */
    const underFlows = async (flags: readonly string[], most: number) => {
      const seconds = LEAD_S + scaled(4000) / 1000;
      const flows = Promise.all([
        flow(lab, a, b.addresses[0]!, seconds),
        flow(lab, b, a.addresses[0]!, seconds),
        flow(lab, c, a2.addresses[1] ?? a2.addresses[0]!, seconds),
      ]);
      await new Promise((r) => setTimeout(r, 500));
      const r = await lab.cli(["node", "rotate-key", ...flags, "--socket", n1.socket], n1.netns);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^node key rotated: \S+ -> \S+ \(switched at .*; 2 pods moved\)$/m);
      for (const [i, [sent, got]] of (await flows).entries()) {
        assert.ok(sent - got <= most, `flow ${i}: ${sent - got} of ${sent} lost`);
      }
      return r.stdout;
    };

    await t.step(
      "node1's key rotates under flows both ways, at most a switch's worth of packets lost in each",
      async () => {
        const from = await publicKey(n1);
        await underFlows([], LOST_PER_ROTATION);
        await rotatedEverywhere(lab, n1, [n2, n3], [a, a2], from);
      },
    );

    await t.step(
      "then its pods' keys too, at most a switch's worth lost in each flow per rotation",
      async () => {
        const from = await publicKey(n1);
        const podKeysBefore = await podKeys(n1);
        // Two rotations in one window: the node's key, then each pod's.
        const out = await underFlows(["--pods"], 2 * LOST_PER_ROTATION);
        assert.match(out, /^2 pods got a new key of their own$/m);
        await rotatedEverywhere(lab, n1, [n2, n3], [a, a2], from);
        // The pods' own keys are new, and the node interface has only those.
        const podKeysAfter = await podKeys(n1);
        const nodePeers = await peersOf(n1);
        for (const [id, key] of podKeysAfter) {
          assert.notEqual(key, podKeysBefore.get(id), `${id} has a new key`);
          assert.ok(nodePeers.has(key), `node1 has the new key of ${id}`);
          assert.ok(!nodePeers.has(podKeysBefore.get(id)!), `node1 has no old key of ${id}`);
        }
      },
    );

    await t.step(
      "a node manager killed between the announcement and the switch finishes the rotation when it starts again",
      async () => {
        const from = await publicKey(n1);
        // Long enough ahead that the kill lands before the switch.
        const rotating = lab.cli([
          "node",
          "rotate-key",
          "--socket",
          n1.socket,
          "--lead",
          `${LEAD_S * 2}s`,
        ], n1.netns);
        let next: Listed["nextKey"];
        await eventually("the cluster hears of the next key", async () => {
          next = (await listed(lab, n1.name)).nextKey;
          return next !== undefined;
        }, scaled(20_000));
        await lab.stopNode(n1, { kill: true });
        assert.notEqual((await rotating).code, 0, "the command fails with its node manager");
        await Deno.stat(`${n1.dir}/keys/next.key`);
        await lab.startNode(n1);
        await eventually(
          "the switch, at its moment",
          async () => (await listed(lab, n1.name)).publicKey === next!.publicKey,
          scaled(60_000),
        );
        assert.ok(Date.now() >= next!.switchAt, "not before its moment");
        for (const [x, y] of [[a, b], [b, a], [c, a2]] as const) {
          await eventually(`${x.name} → ${y.name}`, () => lab.ping(x, y.addresses[0]!), 30_000);
        }
        await rotatedEverywhere(lab, n1, [n2, n3], [a, a2], from);
      },
    );
  },
);
