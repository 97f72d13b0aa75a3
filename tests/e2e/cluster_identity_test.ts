/**
 * A cluster manager whose store was emptied, replaced or rolled back, end to
 * end: the manager refuses what it can tell (an emptied store, one behind the
 * revision it served); nodes refuse the rest (another cluster's manager, a
 * snapshot behind what they applied) and keep their peers, routes and pods.
 */
import assert from "node:assert/strict";
import { eventually, labTest, nodeInfo, ping, wgPeers } from "../_helpers/e2e.ts";

function copyDir(from: string, to: string): void {
  Deno.mkdirSync(to, { recursive: true, mode: 0o700 });
  for (const e of Deno.readDirSync(from)) {
    if (e.isFile) Deno.copyFileSync(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

function emptyDir(dir: string): void {
  for (const e of Deno.readDirSync(dir)) Deno.removeSync(`${dir}/${e.name}`, { recursive: true });
}

labTest(
  "nodes never follow a cluster manager whose store was emptied, replaced or rolled back",
  async (lab) => {
    const data = `${lab.state.dir}/cluster`;
    await lab.startCluster();
    const [n1, n2] = await Promise.all([lab.addNode(1), lab.addNode(2)]);
    const [pa, pb] = await Promise.all([lab.addPod(n1, 1), lab.addPod(n2, 1)]);
    const log1 = () => Deno.readTextFileSync(`${n1.dir}/node.log`);
    /** Waits until node1's log matches, or fails showing its end. */
    const logged = async (what: string, re: RegExp) => {
      try {
        await eventually(what, () => Promise.resolve(re.test(log1())), 30_000);
      } catch (err) {
        throw new Error(`${(err as Error).message}; node1's log ends:\n${log1().slice(-3000)}`);
      }
    };
    const i2 = await nodeInfo(n2);
    await eventually("node1 has node2", async () => (await wgPeers(n1)).includes(i2.publicKey));
    // A copy of the store with two nodes, as a backup taken now would be.
    await lab.stopCluster();
    const backup = `${lab.state.dir}/backup`;
    copyDir(data, backup);
    Deno.removeSync(`${backup}/cluster.revision`);
    await lab.startCluster();
    const n3 = await lab.addNode(3);
    const i3 = await nodeInfo(n3);
    await eventually("node1 has node3", async () => (await wgPeers(n1)).includes(i3.publicKey));
    const peers = (await wgPeers(n1)).sort();
    const reachable = async () => {
      for (const addr of pb.addresses) assert.ok(await ping(pa.netns, addr), `pod → pod ${addr}`);
      assert.deepEqual((await wgPeers(n1)).sort(), peers, "node1's peers unchanged");
    };

    /** The names of the nodes the running manager has. */
    const names = async () => {
      const r = await lab.cli(
        ["cluster", "node", "list", "--json", ...lab.adminFlags],
        lab.underlay,
      );
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { name: string }[]).map((n) => n.name).sort();
    };

    // 1. Emptied: a zero-length store. The manager refuses to start.
    await lab.stopCluster({ kill: true });
    const good = `${lab.state.dir}/good`;
    copyDir(data, good);
    Deno.writeFileSync(`${data}/cluster.db`, new Uint8Array(0));
    for (const f of ["cluster.db-wal", "cluster.db-shm"]) Deno.removeSync(`${data}/${f}`);
    await assert.rejects(lab.startCluster(), /exited early/);
    assert.match(
      Deno.readTextFileSync(`${lab.state.dir}/cluster.log`),
      /cluster\.db holds no cluster, but .* held cluster/,
    );
    await reachable();

    // 2. Replaced: the whole directory gone, a new cluster started with the
    // same tokens. Nodes see another cluster id and do not register there.
    emptyDir(data);
    await lab.startCluster();
    await logged(
      "node1 refusing the new cluster",
      /answers for cluster \S+, but this node belongs to cluster/,
    );
    await reachable();
    assert.deepEqual(await names(), [], "no node registered with the new cluster");

    // 3. Rolled back: the old copy (two nodes) put back without the revision
    // it served. Nodes ahead of it refuse its snapshot and keep node3.
    await lab.stopCluster({ kill: true });
    emptyDir(data);
    copyDir(backup, data);
    await lab.startCluster();
    await logged(
      "node1 refusing the rolled-back store",
      /snapshot is at revision \d+, behind revision \d+/,
    );
    // node3, unknown to the old copy, is refused instead of registering
    // into it (which would move its revision up to what node1 applied).
    const log3 = () => Deno.readTextFileSync(`${n3.dir}/node.log`);
    await eventually(
      "node3 refused by the rolled-back store",
      () => Promise.resolve(/store is at revision \d+, behind revision \d+/.test(log3())),
      30_000,
    ).catch((err) => {
      throw new Error(`${(err as Error).message}; node3's log ends:\n${log3().slice(-3000)}`);
    });
    assert.deepEqual(await names(), ["node1", "node2"], "node3 not registered into the old copy");
    await reachable();
    assert.equal((await nodeInfo(n1)).connected, false);

    // 4. The good store back: nodes follow it again.
    await lab.stopCluster({ kill: true });
    emptyDir(data);
    copyDir(good, data);
    await lab.startCluster();
    await eventually("node1 following again", async () => (await nodeInfo(n1)).connected, 30_000);
    await reachable();
  },
);
