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
import { dfPing, eventually, fragments, labTest, mtuRoutes } from "../_helpers/e2e.ts";
import type { Lab, LabNodeState, LabPod } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { NAT_KEEPALIVE_S } from "../../modes/node/mesh.ts";

const runner = new SystemRunner();

interface ListedNode {
  name: string;
  endpoint: string;
  subnets: string[];
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

/** A node interface's endpoint for another node. */
async function endpointOf(node: LabNodeState, other: LabNodeState): Promise<string | undefined> {
  return (await dump(node)).get(await publicKey(other))?.[0];
}

/** Whether `wgcni status` on `node` shows its peer `other` as relayed. */
async function relayedIn(lab: Lab, node: LabNodeState, other: string): Promise<boolean> {
  const r = await lab.cli(["status", "--json", "--socket", node.socket], node.netns);
  assert.equal(r.code, 0, r.stderr);
  const peers = (JSON.parse(r.stdout) as { peers: { name: string; path?: string }[] }).peers;
  return peers.some((p) => p.name === `node/${other}` && p.path === "relayed");
}

const RELAY = "192.0.2.1:7600";
const NARROW = 1400;

labTest(
  "nodes that cannot reach each other go through the relay, and back to the direct path when it opens",
  async (lab, t) => {
    await lab.startCluster({ args: ["--relay-listen", RELAY, "--relay-ports", "16"] });
    const joinArgs = ["--relay-retry", "5s"];
    const [n2, n3, n4, n5] = await Promise.all([
      // UDP from node2's NAT to node3's is blocked (and so node3's finds no mapping at node2's).
      lab.addNode(2, {
        nat: "cone",
        joinArgs,
        routerRules: ["ip daddr 192.0.2.13 udp dport 51820 drop"],
      }),
      lab.addNode(3, { nat: "cone", joinArgs }),
      lab.addNode(4, { nat: "random", joinArgs }),
      // node5's link carries 1,400 bytes: the relayed path to it is that narrow.
      lab.addNode(5, { nat: "random", joinArgs, routerMtu: NARROW }),
    ]) as [LabNodeState, LabNodeState, LabNodeState, LabNodeState];
    const [p2, p3, p4, p5] = await Promise.all(
      [n2, n3, n4, n5].map((n) => lab.addPod(n, 1)),
    ) as [LabPod, LabPod, LabPod, LabPod];

    await t.step("behind two port-picking NATs: through the relay", async () => {
      await reaches(lab, p4, p5);
      await reaches(lab, p5, p4);
      const relayHost = RELAY.split(":")[0]!;
      // A try of the direct path (every 5 s) sets the direct endpoint for up to a
      // second before the relay's is put back: the interfaces are read between tries.
      for (const [a, b] of [[n4, n5], [n5, n4]] as const) {
        await eventually(
          `${a.name} sends to ${b.name} through the relay`,
          async () => (await endpointOf(a, b))?.startsWith(`${relayHost}:`) ?? false,
        );
      }
      assert.ok(await relayedIn(lab, n4, "node5"));
      const text = await lab.cli(["status", "--socket", n4.socket], n4.netns);
      assert.match(text.stdout, /192\.0\.2\.1:76\d\d \(behind NAT\) relayed/);
      // Direct tries every 5 s do not take it off the relay, and it keeps working.
      await new Promise((r) => setTimeout(r, 7000));
      await reaches(lab, p4, p5);
      assert.ok(await relayedIn(lab, n4, "node5"));
    });

    await t.step("the relayed path has the narrower link's MTU: what fits goes whole", async () => {
      const subnets5 = (await listed(lab)).get("node5")!.subnets;
      await eventually("node4 routes node5's subnets with 1,340", async () => {
        const routes = await mtuRoutes(n4);
        return subnets5.every((s) => routes.get(s) === NARROW - 60);
      }, 30_000);
      const watched = [n4.netns, n4.router!, n5.netns, n5.router!, lab.underlay];
      const before = await fragments(watched);
      // Pod to pod the path is also node5's own interface: its link less 80.
      for (const [from, to] of [[p4, p5], [p5, p4]] as const) {
        for (const [i, address] of to.addresses.entries()) {
          const fits = NARROW - 80 - (i === 0 ? 28 : 48);
          // A try of the direct path (every 5 s) loses what is sent during it: ask again.
          await eventually(
            `${from.name} → ${address}, ${fits} bytes, whole`,
            async () => (await dfPing(from, address, fits)).code === 0,
          );
        }
      }
      const big = await dfPing(p4, p5.addresses[0]!, 1420 - 28);
      assert.notEqual(big.code, 0);
      assert.match(big.stdout + big.stderr, new RegExp(`mtu ?=? ?${NARROW - 60}`));
      assert.deepEqual(await fragments(watched), before, "no fragment on the relayed path");
      assert.ok(await relayedIn(lab, n4, "node5"), "still relayed");
    });

    await t.step("UDP blocked between two NATs: through the relay", async () => {
      await reaches(lab, p2, p3);
      await reaches(lab, p3, p2);
      assert.ok(await relayedIn(lab, n2, "node3"));
      assert.ok(await relayedIn(lab, n3, "node2"));
    });

    await t.step("the direct path opens: both sides move to it by themselves", async () => {
      await runner.run(["nft", "flush", "chain", "ip", "lab_nat", "forward"], {
        netns: n2.router!,
      });
      await eventually(
        "node2 and node3 direct",
        async () => {
          await lab.ping(p2, p3.addresses[0]!, { count: 1 });
          return !(await relayedIn(lab, n2, "node3")) && !(await relayedIn(lab, n3, "node2")) &&
            (await endpointOf(n2, n3)) === `${n3.publicAddress}:51820` &&
            (await endpointOf(n3, n2)) === `${n2.publicAddress}:51820`;
        },
        60_000,
      );
      await reaches(lab, p2, p3);
      await reaches(lab, p3, p2);
    });
  },
);
