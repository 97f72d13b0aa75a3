/**
 * The node manager end to end: real `wgcni cluster serve` and `wgcni node
 * join` processes in network namespaces on a simulated underlay.
 */
import assert from "node:assert/strict";
import {
  addNodeSeenBy,
  allocations,
  eventually,
  expectedBackend,
  flow,
  ifindex,
  labTest,
  nodeInfo,
  ping,
  podInterfaceExists,
  wgPeers,
  wireguardGoProcesses,
} from "../_helpers/e2e.ts";
import type { LabNodeState } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { podWgName } from "../../modes/node/pods.ts";

const runner = new SystemRunner();

labTest("node managers keep a WireGuard mesh in step with the cluster", async (lab, t) => {
  await lab.startCluster();
  const [n1, n2] = await Promise.all([lab.addNode(1), lab.addNode(2)]);
  const i1 = await nodeInfo(n1 as LabNodeState);
  const i2 = await nodeInfo(n2 as LabNodeState);

  await t.step(
    "two nodes have each other as peers and reach each other over IPv4 and IPv6",
    async () => {
      await eventually("peers", async () =>
        (await wgPeers(n1)).includes(i2.publicKey) &&
        (await wgPeers(n2)).includes(i1.publicKey));
      for (const gw of i2.gateways) {
        assert.ok(await ping(n1.netns, gw), `node1 → ${gw}`);
      }
      for (const gw of i1.gateways) assert.ok(await ping(n2.netns, gw), `node2 → ${gw}`);
    },
  );

  await t.step(
    "wgcni status reports the node, its backend, peers and allocations; nft masquerades",
    async () => {
      const r = await lab.cli(["status", "--json", "--socket", n1.socket], n1.netns);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout);
      assert.equal(s.node.name, "node1");
      const backend = await expectedBackend();
      assert.equal(s.node.backend, backend);
      assert.equal(s.node.subnets.length, 2);
      assert.ok(s.peers.some((p: { name: string }) => p.name === "node/node2"));
      assert.deepEqual(s.allocations.pods, []);
      const text = await lab.cli(["status", "--socket", n1.socket], n1.netns);
      const named = backend === "kernel" ? "kernel WireGuard" : "wireguard-go";
      assert.match(text.stdout, new RegExp(`^interface +\\S+ +backend ${named} `, "m"));
      assert.match(text.stdout, /node\/node2 +192\.0\.2\.12:51820/);
      assert.doesNotMatch(r.stdout + text.stdout, /private/i);
      const nft = await runner.run(["nft", "list", "table", "inet", "wgcni"], {
        netns: n1.netns,
      });
      assert.match(nft, /ip saddr \{ 10\.244\.0\.0\/16, 10\.250\.0\.0\/24 \}.*masquerade/);
      assert.match(nft, /ip6 saddr \{ fd00:10:244::\/56, fd00:10:250::\/112 \}.*masquerade/);
      const conf = JSON.parse(await Deno.readTextFile(`${n1.dir}/net.d/10-wgcni.conflist`));
      assert.deepEqual(conf.plugins, [{ type: "wgcni", socket: n1.socket }]);
      const sock = await Deno.stat(n1.socket);
      assert.equal(sock.mode! & 0o777, 0o600);
    },
  );

  await t.step(
    "a third node joins under traffic: one delta each, same interface, no loss",
    async () => {
      const before = [await nodeInfo(n1), await nodeInfo(n2)];
      const idx = [await ifindex(n1), await ifindex(n2)];
      const f = await flow(n1.netns, i2.gateways[0] as string);
      await new Promise((r) => setTimeout(r, 500));
      const { info: i3 } = await addNodeSeenBy(lab, 3, { by: [n1, n2] });
      await new Promise((r) => setTimeout(r, 500));
      const { sent, received } = await f.stop();
      assert.ok(sent > 10, `flow sent ${sent}`);
      assert.equal(received, sent, `flow lost ${sent - received} of ${sent}`);
      const after = [await nodeInfo(n1), await nodeInfo(n2)];
      assert.equal(after[0]?.meshOperations, (before[0]?.meshOperations ?? 0) + 1);
      assert.equal(after[1]?.meshOperations, (before[1]?.meshOperations ?? 0) + 1);
      assert.deepEqual([await ifindex(n1), await ifindex(n2)], idx);
      for (const gw of i3.gateways) assert.ok(await ping(n1.netns, gw), `node1 → node3 ${gw}`);
    },
  );

  await t.step(
    "with the cluster manager down, peers stay and ADD/DEL still work; it converges after",
    async () => {
      await lab.stopCluster();
      const peersBefore = (await wgPeers(n1)).sort();
      const pod = await lab.addPod(n1, 1);
      assert.equal(pod.addresses.length, 2);
      assert.ok(
        await ping(pod.netns, i2.gateways[0] as string),
        "pod on node1 → node2 with manager down",
      );
      await lab.deletePod(n1, pod);
      assert.deepEqual(await allocations(n1), []);
      const podPeers = (await wgPeers(n1)).sort();
      assert.deepEqual(podPeers, peersBefore);
      await lab.startCluster();
      await addNodeSeenBy(lab, 4, { by: [n1, n2], ms: 20000 });
    },
  );

  await t.step(
    "kill -9 of a node manager keeps its pods' addresses and connectivity",
    async () => {
      const pods = [await lab.addPod(n1, 2), await lab.addPod(n1, 3)];
      const before = await allocations(n1);
      const f = await flow(pods[0]?.netns as string, i2.gateways[0] as string, 0.1);
      await lab.stopNode(n1, { kill: true });
      await new Promise((r) => setTimeout(r, 300));
      await lab.startNode(n1);
      assert.equal(n1.backend, await expectedBackend(), "the adopted interface's backend");
      await new Promise((r) => setTimeout(r, 500));
      const { sent, received } = await f.stop();
      assert.ok(sent > 3);
      assert.ok(
        received >= sent - 1,
        `flow lost ${sent - received} of ${sent} across the restart`,
      );
      const after = await allocations(n1);
      assert.deepEqual(after, before);
      const addrs = after.flatMap((p) => p.addresses);
      assert.equal(new Set(addrs).size, addrs.length, "no duplicate address");
      for (const p of pods) assert.ok(await ping(p.netns, i2.gateways[1] as string));
      // Exactly one live pod interface per pod (on wireguard-go one process
      // each, on the kernel none at all); none left after DEL.
      const names = await Promise.all(
        pods.map((p) => podWgName(n1.iface, p.containerId, "eth0")),
      );
      const alive = (i: number) =>
        podInterfaceExists(names[i] as string, {
          node: n1.netns,
          pod: pods[i]?.netns as string,
        });
      for (const i of pods.keys()) assert.ok(await alive(i), "pod interface alive");
      const procs = await wireguardGoProcesses();
      for (const n of names) {
        assert.equal(
          procs.filter((p) => p.name === n).length,
          (await expectedBackend()) === "userspace" ? 1 : 0,
          `wireguard-go processes for ${n}`,
        );
      }
      for (const p of pods) await lab.deletePod(n1, p);
      assert.deepEqual(await allocations(n1), []);
      await eventually("pod interfaces gone", async () => {
        for (const i of pods.keys()) if (await alive(i)) return false;
        return true;
      }, 5000);
    },
  );

  await t.step(
    "bad requests on the real socket get clear errors and change nothing",
    async () => {
      const c = createLocalClient(n2.socket);
      try {
        const before = await allocations(n2);
        const bad = await c.raw("/v1/cni/add", { method: "POST", body: "{not json" });
        assert.equal(bad.status, 400);
        assert.equal((bad.body as { code: number }).code, 6);
        const big = await c.raw("/v1/cni/add", {
          method: "POST",
          body: "x".repeat(2 * 1024 * 1024),
        });
        assert.equal(big.status, 413);
        assert.match((big.body as { msg: string }).msg, /larger than/);
        const unknown = await c.call("add", {
          containerId: "x",
          ifname: "eth0",
          netns: "/nonexistent",
          args: {},
          config: {},
          extra: 1,
        });
        assert.equal((unknown.body as { code: number }).code, 2);
        const missingNs = await c.call("add", {
          containerId: "x",
          ifname: "eth0",
          netns: "/run/netns/wgcni-does-not-exist",
          args: {},
          config: { cniVersion: "1.0.0", name: "wgcni" },
        });
        assert.equal(missingNs.status, 400);
        assert.equal((missingNs.body as { code: number }).code, 4);
        assert.match((missingNs.body as { msg: string }).msg, /does not exist/);
        assert.deepEqual(await allocations(n2), before);
        const pod = await lab.addPod(n2, 1);
        const again = await lab.plugin(n2, "ADD", {
          containerId: pod.containerId,
          ifname: "eth0",
          netns: `/run/netns/${pod.netns}`,
        });
        assert.notEqual(again.code, 0);
        assert.match(again.stdout, /already attached/);
        assert.equal((await allocations(n2)).length, 1);
        await lab.deletePod(n2, pod);
      } finally {
        c.close();
      }
    },
  );
});
