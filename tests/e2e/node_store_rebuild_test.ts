/**
 * A node manager killed with live pods whose state is then emptied or
 * rolled back (a zero-length node.db, the WAL cut in half, the WAL deleted)
 * rebuilds what it lost from the kernel: it warns, never hands out an
 * address a live pod holds, keeps the pods working, cleans a DEL of such a
 * pod up completely, and frees what is provably gone on GC.
 */
import assert from "node:assert/strict";
import {
  allocations,
  eventually,
  labTest,
  nodeInfo,
  ping,
  podInterfaceExists,
  podPort,
  recoveredPods,
  step,
  wgPeers,
} from "../_helpers/e2e.ts";
import type { LabNodeState, LabPod } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { podWgName } from "../../modes/node/pods.ts";
import { openPodAddresses } from "../../modes/node/addresses.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import { generateKeyPair } from "../../lib/wireguard/mod.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";

const runner = new SystemRunner();

/** Every address the node has reserved, for known and recovered pods alike. */
async function reserved(node: LabNodeState): Promise<string[]> {
  return [
    ...(await allocations(node)).flatMap((p) => p.addresses),
    ...(await recoveredPods(node)).flatMap((p) => p.addresses),
  ];
}

/** The host addresses the node interface routes to peers. */
async function peerAddresses(node: LabNodeState): Promise<string[]> {
  const out = await runner.run(["wg", "show", node.iface, "allowed-ips"], { netns: node.netns });
  return out.split("\n").flatMap((l) => l.split("\t")[1]?.split(" ") ?? [])
    .filter((a) => a.endsWith("/32") || a.endsWith("/128")).map((a) => a.split("/")[0] as string);
}

/** A probe of whether the pod's interface is still there (read while it is). */
const interfaceOf = async (node: LabNodeState, p: LabPod) => {
  const wgName = await podWgName(node.iface, p.containerId, p.ifname);
  const where = { node: node.netns, pod: p.netns, port: await podPort(node, p.addresses[0]!) };
  return () => podInterfaceExists(wgName, where);
};

const remove = (path: string) => Deno.remove(path).catch(() => {});

const DAMAGE: [string, (state: string) => Promise<void>][] = [
  ["a zero-length node.db without -wal and -shm", async (state) => {
    await Deno.writeFile(`${state}/node.db`, new Uint8Array());
    await remove(`${state}/node.db-wal`);
    await remove(`${state}/node.db-shm`);
  }],
  ["the WAL cut in half", async (state) => {
    const wal = await Deno.readFile(`${state}/node.db-wal`);
    await Deno.writeFile(`${state}/node.db-wal`, wal.subarray(0, Math.floor(wal.length / 2)));
  }],
  ["the WAL deleted", async (state) => {
    await remove(`${state}/node.db-wal`);
  }],
];

labTest(
  "an emptied or rolled-back node store is rebuilt from the kernel, never started over",
  async (lab, t) => {
    await lab.startCluster();
    const node = await lab.addNode(1);
    const info = await nodeInfo(node);
    const log = `${node.dir}/node.log`;
    for (const [v, [what, damage]] of DAMAGE.entries()) {
      // Each damage loses the store another way; one of them on a second backend.
      await step(t, what, async () => {
        const pods: LabPod[] = [];
        for (let i = 0; i < 3; i++) pods.push(await lab.addPod(node, v * 10 + i));
        const [p0, p1, p2] = pods as [LabPod, LabPod, LabPod];
        const held = new Set(pods.flatMap((p) => p.addresses));
        assert.equal(held.size, 6);
        await lab.stopNode(node, { kill: true });
        const logBefore = (await Deno.readTextFile(log)).length;
        await damage(`${node.dir}/state`);
        await lab.startNode(node);
        await eventually(
          "the node following the cluster again",
          async () => (await nodeInfo(node)).connected,
        );
        const tail = (await Deno.readTextFile(log)).slice(logBefore);
        assert.match(tail, /WARNING .*emptied or rolled back/, tail);

        // Nothing the live pods hold is free, and they keep working.
        const now = await reserved(node);
        for (const a of held) assert.ok(now.includes(a), `${a} is still reserved`);
        assert.equal(new Set(now).size, now.length, "no address reserved twice");
        for (const a of held) {
          assert.ok((await peerAddresses(node)).includes(a), `the node still routes ${a}`);
        }
        for (const p of pods) {
          for (const gw of info.gateways) assert.ok(await ping(p.netns, gw), `${p.name} → ${gw}`);
        }
        for (const a of p1.addresses) assert.ok(await ping(p0.netns, a), `${p0.name} → ${a}`);

        // New pods get other addresses.
        const fresh = [await lab.addPod(node, v * 10 + 5), await lab.addPod(node, v * 10 + 6)];
        for (const f of fresh) {
          for (const a of f.addresses) {
            assert.ok(!held.has(a), `${f.name} got ${a}, held by a pod`);
          }
        }
        const all = await reserved(node);
        assert.equal(new Set(all).size, all.length, "no address reserved twice");

        // A DEL of a pod the store had lost cleans it up completely.
        const iface0 = await interfaceOf(node, p0);
        await lab.deletePod(node, p0);
        for (const a of p0.addresses) {
          assert.ok(!(await reserved(node)).includes(a), `${a} is released`);
          assert.ok(!(await peerAddresses(node)).includes(a), `the peer of ${a} is removed`);
        }
        await eventually("the pod interface gone", async () => !(await iface0()), 5000);

        // A pod gone without a DEL is freed by GC; a listed one is kept.
        const iface1 = await interfaceOf(node, p1);
        await runner.run(["ip", "netns", "del", p1.netns]);
        lab.state.namespaces.splice(lab.state.namespaces.indexOf(p1.netns), 1);
        node.pods.splice(node.pods.indexOf(p1), 1);
        await eventually("the gone pod's interface to end", async () => !(await iface1()));
        const valid = [p2, ...fresh].map((p) => ({ containerID: p.containerId, ifname: "eth0" }));
        const gc = await lab.plugin(node, "GC", {
          containerId: "",
          ifname: "",
          netns: "",
          extra: { "cni.dev/valid-attachments": valid },
        });
        assert.equal(gc.code, 0, gc.stdout);
        for (const a of p1.addresses) {
          assert.ok(!(await reserved(node)).includes(a), `GC released ${a}`);
          assert.ok(!(await peerAddresses(node)).includes(a), `GC removed the peer of ${a}`);
        }
        for (const a of p2.addresses) assert.ok((await reserved(node)).includes(a));
        for (const gw of info.gateways) assert.ok(await ping(p2.netns, gw), `${p2.name} works`);

        for (const p of [p2, ...fresh]) await lab.deletePod(node, p);
        assert.deepEqual(await reserved(node), [], "nothing is left reserved");
        assert.deepEqual(await wgPeers(node), [], "no pod peer is left");
      }, { neutral: v > 0 });
    }
    await t.step(
      "a store rolled back to earlier states of live pods follows the kernel",
      async () => {
        const [a, b] = [await lab.addPod(node, 30), await lab.addPod(node, 31)];
        const keyOf = async (p: LabPod) =>
          (await allocations(node) as { containerId: string; publicKey?: string }[])
            .find((x) => x.containerId === p.containerId)?.publicKey as string;
        const bKey = await keyOf(b);
        // An attachment with a record but no interface left (a DEL cut short).
        const ghostNs = `wgd-${lab.state.id}-ghost`;
        await runner.run(["ip", "netns", "add", ghostNs]);
        lab.state.namespaces.push(ghostNs);
        const client = createLocalClient(node.socket);
        const subnets = (await client.allocations()).subnets as string[];
        client.close();
        const ghostAddress = (subnets[0] as string).replace(/\.0\/24$/, ".200");
        await lab.stopNode(node, { kill: true });
        const logBefore = (await Deno.readTextFile(log)).length;
        const db = openDatabase(`${node.dir}/state/node.db`);
        try {
          // a: the ADD finished in the kernel, the store still says "adding".
          db.prepare("UPDATE pods SET phase = 'adding' WHERE container_id = ?").run(
            a.containerId,
          );
          // b: an earlier incarnation of the same attachment (another key and port).
          db.prepare("UPDATE pods SET public_key = ?, listen_port = 1 WHERE container_id = ?")
            .run((await generateKeyPair()).publicKey, b.containerId);
          const ghost = {
            containerId: "ghost",
            ifname: "eth0",
            netns: `/run/netns/${ghostNs}`,
            phase: "ready" as const,
            wgName: "wgpghost",
            publicKey: (await generateKeyPair()).publicKey,
            addresses: [ghostAddress],
            listenPort: 2,
            createdAt: 1,
          };
          const store = new NodeStateStore(db);
          store.transaction(() => {
            openPodAddresses(db, subnets).claim("ghost/eth0", [ghostAddress]);
            store.put(ghost);
          });
        } finally {
          db.close();
        }
        await lab.startNode(node);
        const tail = (await Deno.readTextFile(log)).slice(logBefore);
        assert.match(tail, /WARNING .*pod ghost\/eth0 has no interface and no peer left/, tail);
        const pods = await allocations(node) as { containerId: string; phase?: string }[];
        assert.deepEqual(pods.map((p) => [p.containerId, p.phase]).sort(), [
          [a.containerId, "ready"],
          [b.containerId, "ready"],
        ]);
        assert.equal(await keyOf(b), bKey, "b's record names its live peer again");
        assert.ok(!(await reserved(node)).includes(ghostAddress), "the ghost's address is free");
        for (const p of [a, b]) {
          for (const gw of info.gateways) assert.ok(await ping(p.netns, gw), `${p.name} → ${gw}`);
        }
        for (const p of [a, b]) await lab.deletePod(node, p);
        assert.deepEqual(await reserved(node), []);
        assert.deepEqual(await wgPeers(node), []);
      },
    );
  },
);
