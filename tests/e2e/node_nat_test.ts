/**
 * Nodes behind NAT, on whichever WireGuard backend the machine has. Each
 * NAT'd node sits behind a router namespace doing nftables masquerade and
 * joins without `--endpoint`:
 *
 * - node1 has an underlay address of its own;
 * - node2 and node3 are behind NATs that keep the port for every
 *   destination (Linux's default masquerade);
 * - node4 is behind a NAT that picks a port per destination (`fully-random`).
 *
 * The manager marks the three as behind NAT and gives others the address it
 * saw; node1 reaches all three, node2 and node3 reach each other directly,
 * and where node1 sees node4 (a port no guess finds) reaches the manager.
 */
import assert from "node:assert/strict";
import { eventually, labTest } from "../_helpers/e2e.ts";
import type { Lab, LabNodeState, LabPod } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { NAT_KEEPALIVE_S } from "../../modes/node/mesh.ts";

const runner = new SystemRunner();

interface ListedNode {
  name: string;
  endpoint: string;
  nat?: boolean;
}

/** The nodes as the manager lists them. */
async function listed(lab: Lab): Promise<Map<string, ListedNode>> {
  const r = await lab.cli(["cluster", "node", "list", "--json", ...lab.adminFlags], lab.underlay);
  assert.equal(r.code, 0, r.stderr);
  return new Map((JSON.parse(r.stdout) as ListedNode[]).map((n) => [n.name, n]));
}

/** A node interface's peers: key → [endpoint, latest handshake, keep-alive]. */
async function dump(node: LabNodeState): Promise<Map<string, [string, number, string]>> {
  const out = await runner.run(["wg", "show", node.iface, "dump"], { netns: node.netns });
  return new Map(
    out.split("\n").slice(1).filter(Boolean).map((l) => {
      const f = l.split("\t");
      return [f[0]!, [f[2]!, Number(f[4]), f[7]!]];
    }),
  );
}

async function publicKey(node: LabNodeState): Promise<string> {
  const out = await runner.run(["wg", "show", node.iface, "public-key"], { netns: node.netns });
  return out.trim();
}

/** Pings from one pod to another until it answers (a NAT'd pair may need a keep-alive round). */
async function reaches(lab: Lab, from: LabPod, to: LabPod) {
  await eventually(
    `${from.name} → ${to.name}`,
    () => lab.ping(from, to.addresses[0]!, { count: 1 }),
    30_000,
  );
}

labTest(
  "nodes behind NAT: found without --endpoint, reached from outside and from each other",
  async (lab, t) => {
    await lab.startCluster();
    const n1 = await lab.addNode(1);
    const [n2, n3, n4] = await Promise.all([
      lab.addNode(2, { nat: "cone" }),
      lab.addNode(3, { nat: "cone" }),
      lab.addNode(4, { nat: "random" }),
    ]) as [LabNodeState, LabNodeState, LabNodeState];
    const [p1, p2, p3, p4] = await Promise.all(
      [n1, n2, n3, n4].map((n) => lab.addPod(n, 1)),
    ) as [LabPod, LabPod, LabPod, LabPod];

    await t.step("the manager marks them behind NAT and gives out what it saw", async () => {
      const nodes = await listed(lab);
      assert.equal(nodes.get("node1")?.nat, undefined);
      assert.equal(nodes.get("node1")?.endpoint, `${n1.endpoint}:51820`);
      for (const n of [n2, n3, n4]) {
        const got = nodes.get(n.name);
        assert.equal(got?.nat, true, `${n.name} is behind NAT`);
        assert.match(
          got!.endpoint,
          new RegExp(`^${n.publicAddress!.replaceAll(".", "\\.")}:\\d+$`),
        );
      }
      // Only the NAT'd nodes keep their mappings open.
      const k1 = await publicKey(n1);
      assert.equal((await dump(n2)).get(k1)?.[2], String(NAT_KEEPALIVE_S));
      assert.equal((await dump(n1)).get(await publicKey(n2))?.[2], "off");
      const status = await lab.cli(["status", "--socket", n2.socket], n2.netns);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /behind NAT, seen at 192\.0\.2\.12:51820/);
    });

    await t.step(
      "a node with an endpoint of its own and NAT'd nodes reach each other",
      async () => {
        for (const p of [p2, p3, p4]) {
          await reaches(lab, p, p1);
          await reaches(lab, p1, p);
        }
        const d1 = await dump(n1);
        assert.equal(d1.get(await publicKey(n2))?.[0], `${n2.publicAddress}:51820`);
      },
    );

    await t.step("two nodes behind port-keeping NATs reach each other directly", async () => {
      await reaches(lab, p2, p3);
      await reaches(lab, p3, p2);
      const [k2, k3] = [await publicKey(n2), await publicKey(n3)];
      const [d2, d3] = [await dump(n2), await dump(n3)];
      assert.equal(d2.get(k3)?.[0], `${n3.publicAddress}:51820`);
      assert.ok((d2.get(k3)?.[1] ?? 0) > 0, "node2 has a handshake with node3");
      assert.equal(d3.get(k2)?.[0], `${n2.publicAddress}:51820`);
    });

    await t.step(
      "where a node sees a NAT'd node's handshakes come from reaches the manager",
      async () => {
        const k4 = await publicKey(n4);
        const seen = (await dump(n1)).get(k4)?.[0];
        assert.ok(seen?.startsWith(`${n4.publicAddress}:`), `node1 sees node4 at ${seen}`);
        await eventually(
          "the manager has node4 where node1 sees it",
          async () => (await listed(lab)).get("node4")?.endpoint === seen,
        );
        // The other nodes get it; node1 keeps the endpoint its interface learnt.
        await eventually(
          "node2 has node4 at the endpoint node1 saw",
          async () => (await dump(n2)).get(k4)?.[0] === seen,
        );
        assert.equal((await dump(n1)).get(k4)?.[0], seen);
        // A restart of node1 (a full resync) keeps it too, and the path works.
        await lab.stopNode(n1);
        await lab.startNode(n1);
        await reaches(lab, p1, p4);
        assert.equal((await dump(n1)).get(k4)?.[0], seen);
      },
    );
  },
);
