/**
 * The node's nftables filter: pods reach no listener of their node's
 * namespace unless the operator opened its port (ICMP to the gateway
 * aside), while pod-to-pod, pod egress, node-to-pod and node-to-node
 * traffic keep working; with `--ingress-filter`, hosts outside the cluster
 * pools reach a pod only on connections the pod started.
 */
import assert from "node:assert/strict";
import { e2eTest, listen, nodeInfo, ping, tcpConnects } from "../_helpers/e2e.ts";
import { Lab, type LabPod } from "../../modes/demo/lab.ts";
import type { Started } from "../../lib/ip/process.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { getLogger } from "../../lib/log.ts";

const runner = new SystemRunner();
const CLOSED = 8080;
const OPENED = 8081;
const POD_PORT = 9090;
const HOST_PORT = 7070;

/** The pod's address of a family. */
const addr = (p: LabPod, family: 4 | 6) =>
  p.addresses.find((a) => a.includes(":") === (family === 6)) as string;

e2eTest(
  "pods reach the node's services only where opened; ingress to pods is filtered on demand",
  async (t) => {
    const lab = await Lab.create(runner, getLogger("test"));
    const listeners: Started[] = [];
    try {
      await lab.startCluster();
      const [n1, n2] = await Promise.all([
        lab.addNode(1, {
          joinArgs: [
            "--pod-open-port",
            `tcp/${OPENED}`,
            "--masquerade",
            "v4",
            "--ingress-filter",
            "v6",
          ],
        }),
        lab.addNode(2),
      ]);
      const [i1, i2] = [await nodeInfo(n1), await nodeInfo(n2)];
      const [gw4, gw6] = i1.gateways as [string, string];
      const p1 = await lab.addPod(n1, 1);
      const p2 = await lab.addPod(n1, 2);
      const q1 = await lab.addPod(n2, 1);
      // A host on the underlay that routes the pod pools to node1.
      const host = await lab.addHost("h", 1);
      const host6 = "2001:db8:77::c9";
      await runner.run(["ip", "-batch", "-"], {
        netns: host.netns,
        stdin: [
          "link set lo up",
          `addr add ${host6}/64 dev eth0 nodad`,
          `route add 10.244.0.0/16 via ${n1.endpoint}`,
          "route add fd00:10:244::/56 via 2001:db8:77::b",
        ].join("\n") + "\n",
      });
      for (const [ns, port] of [[n1.netns, CLOSED], [n1.netns, OPENED], [host.netns, HOST_PORT]]) {
        listeners.push(await listen(ns as string, port as number));
      }
      for (const p of [p1, p2, q1]) listeners.push(await listen(p.netns, POD_PORT));
      await new Promise((r) => setTimeout(r, 300));

      await t.step("a pod reaches no listener of its node's namespace", async () => {
        for (const target of [n1.endpoint, gw4, gw6]) {
          assert.ok(
            !(await tcpConnects(p1.netns, target, CLOSED, 1.5)),
            `pod → node ${target}:${CLOSED} is refused`,
          );
        }
        assert.ok(
          !(await tcpConnects(q1.netns, gw4, CLOSED, 1.5)),
          "a pod of another node → node1's gateway is refused too",
        );
      });

      await t.step("an opened port and ICMP to the gateways are let through", async () => {
        for (const target of [n1.endpoint, gw4, gw6]) {
          assert.ok(await tcpConnects(p1.netns, target, OPENED), `pod → ${target}:${OPENED}`);
        }
        for (const gw of [...i1.gateways, ...i2.gateways]) {
          assert.ok(await ping(p1.netns, gw), `pod → gateway ${gw}`);
        }
      });

      await t.step("the node itself, other nodes and underlay hosts still reach it", async () => {
        assert.ok(await tcpConnects(n1.netns, gw4, CLOSED), "node1 → its own gateway");
        assert.ok(await tcpConnects(n2.netns, gw4, CLOSED), "node2 → node1's gateway (mesh)");
        assert.ok(await tcpConnects(n2.netns, gw6, CLOSED), "node2 → node1's gateway (mesh, v6)");
        assert.ok(await tcpConnects(host.netns, n1.endpoint, CLOSED), "underlay host → node1");
        for (const gw of i2.gateways) assert.ok(await ping(n1.netns, gw), `node1 → node2 ${gw}`);
      });

      await t.step("pod-to-pod, node-to-pod and pod egress keep working", async () => {
        for (const family of [4, 6] as const) {
          for (const [from, to] of [[p1, p2], [p1, q1], [q1, p1]] as const) {
            assert.ok(
              await tcpConnects(from.netns, addr(to, family), POD_PORT),
              `${from.name} → ${to.name} over IPv${family}`,
            );
          }
          assert.ok(
            await tcpConnects(n1.netns, addr(p1, family), POD_PORT),
            `node1 → its pod over IPv${family}`,
          );
          assert.ok(
            await tcpConnects(n2.netns, addr(p1, family), POD_PORT),
            `node2 → node1's pod over IPv${family}`,
          );
        }
        assert.ok(await tcpConnects(p1.netns, host.address, HOST_PORT), "egress, masqueraded v4");
        assert.ok(await tcpConnects(p1.netns, host6, HOST_PORT), "egress, public v6");
        assert.ok(await tcpConnects(q1.netns, host.address, HOST_PORT), "egress from node2");
      });

      await t.step("with --ingress-filter v6, outside hosts reach a pod only on IPv4", async () => {
        assert.ok(
          !(await tcpConnects(host.netns, addr(p1, 6), POD_PORT, 1.5)),
          "host → pod over IPv6 is dropped",
        );
        assert.ok(
          await tcpConnects(host.netns, addr(p1, 4), POD_PORT),
          "host → pod over IPv4 (no filter there)",
        );
        const nft = await runner.run(["nft", "list", "table", "inet", "wgcni"], {
          netns: n1.netns,
        });
        assert.match(nft, /hook forward/);
        assert.match(nft, /ip6 daddr fd00:10:244::\/56 .*ct state != \{ established, related \}/);
        assert.doesNotMatch(nft, /ip daddr 10\.244\.0\.0\/16 .*ct state/);
        const nft2 = await runner.run(["nft", "list", "table", "inet", "wgcni"], {
          netns: n2.netns,
        });
        // node2's forward chain records pod flows (direct paths) and filters nothing.
        assert.doesNotMatch(
          nft2,
          /ct state != \{ established, related \}/,
          "no ingress filter where not asked for",
        );
      });
    } finally {
      for (const l of listeners) await l.stop(500);
      await lab.teardown();
    }
  },
);
