/**
 * The MTU toward each node peer, on whichever WireGuard backend the machine
 * has: node2 sits behind a router whose link to it carries 1,400 bytes (the
 * others' links carry 1,500). node2 reports its link's MTU; node1 and node3
 * route node2's subnets with 1,340 (1,400 less IPv4's 60 of overhead) and
 * answer larger packets from their pods with "fragmentation needed"; pod to
 * pod, what fits goes whole and nothing is fragmented on the way, either
 * way, IPv4 and IPv6; node1 and node3 keep the interface's MTU between them.
 */
import assert from "node:assert/strict";
import { dfPing, eventually, fragments, labTest, mtuRoutes } from "../_helpers/e2e.ts";
import type { LabPod } from "../../modes/demo/lab.ts";

const NARROW = 1400;

labTest(
  "MTU per path: a node behind a narrower link is sent packets that fit it; nothing fragments",
  async (lab, t) => {
    await lab.startCluster();
    const joinArgs = ["--pod-paths", "hub"];
    const n1 = await lab.addNode(1, { joinArgs });
    const n2 = await lab.addNode(2, { joinArgs, nat: "cone", routerMtu: NARROW });
    const n3 = await lab.addNode(3, { joinArgs });
    const [p1, p2, p3] = await Promise.all([n1, n2, n3].map((n) => lab.addPod(n, 1))) as [
      LabPod,
      LabPod,
      LabPod,
    ];
    for (const [x, y] of [[p1, p2], [p2, p1], [p1, p3]] as const) {
      await eventually(`${x.name} → ${y.name}`, () => lab.ping(x, y.addresses[0]!), 30_000);
    }

    await t.step(
      "node1 and node3 route node2's subnets with the path's MTU, not each other's",
      async () => {
        const subnets = (await lab.cli([
          "cluster",
          "node",
          "list",
          "--json",
          ...lab.adminFlags,
        ], lab.underlay)).stdout;
        const two = (JSON.parse(subnets) as { name: string; subnets: string[]; mtu?: number }[])
          .find((n) => n.name === "node2")!;
        assert.equal(two.mtu, NARROW, "node2 reported its link's MTU");
        for (const n of [n1, n3]) {
          await eventually(`${n.name}'s routes toward node2`, async () => {
            const routes = await mtuRoutes(n);
            return two.subnets.every((s) => routes.get(s) === NARROW - 60);
          }, 30_000);
          const routes = await mtuRoutes(n);
          assert.equal(routes.size, 2, `${n.name}: only node2's subnets: ${[...routes.keys()]}`);
        }
        assert.equal((await mtuRoutes(n2)).size, 0, "node2's own MTU is below its path already");
        const status = await lab.cli(["status", "--socket", n1.socket], n1.netns);
        assert.match(status.stdout, new RegExp(`mtu ${NARROW - 60}`));
      },
    );

    await t.step("what fits goes whole; what does not is answered, not fragmented", async () => {
      const watched = [n1.netns, n2.netns, n2.router!, lab.underlay];
      const before = await fragments(watched);
      const mtu = NARROW - 60;
      // Pod to pod the path is also node2's own interface: its link less 80.
      const podPath = NARROW - 80;
      for (const [from, to] of [[p1, p2], [p2, p1]] as const) {
        for (const [i, address] of to.addresses.entries()) {
          // Payload: the MTU less the IPv4 (20) or IPv6 (40) and ICMP (8) headers.
          const fits = podPath - (i === 0 ? 28 : 48);
          const ok = await dfPing(from, address, fits);
          assert.equal(ok.code, 0, `${from.name} → ${address}, ${fits} bytes: ${ok.stdout}`);
        }
      }
      // From node1's pod, a packet the size of its own interface toward node2: told the MTU.
      const big = await dfPing(p1, p2.addresses[0]!, 1420 - 28);
      assert.notEqual(big.code, 0);
      assert.match(big.stdout + big.stderr, new RegExp(`mtu ?=? ?${mtu}`));
      assert.deepEqual(
        await fragments(watched),
        before,
        "no fragment on nodes, router or underlay",
      );
    });
  },
);
