/**
 * Node fail-over between cluster-manager replicas, end to end: an etcd and
 * two `wgcni cluster serve --store etcd://…` replicas in the lab's underlay
 * namespace, node managers joined with both URLs. The replica the nodes
 * follow is killed; a node joining afterwards reaches every node through the
 * other replica, with the data plane undisturbed.
 */
import assert from "node:assert/strict";
import {
  addNodeSeenBy,
  eventually,
  flow,
  ifindex,
  labTest,
  nodeInfo,
  ping,
  wgPeers,
} from "../_helpers/e2e.ts";
import { hasEtcd } from "../unit/_etcd.ts";

labTest("nodes follow another cluster-manager replica when theirs is killed", async (lab) => {
  await lab.startEtcd();
  await lab.startCluster({ replica: 0, store: lab.etcdUrl });
  await lab.startCluster({ replica: 1, store: lab.etcdUrl });
  const [n1, n2] = await Promise.all([lab.addNode(1), lab.addNode(2)]);
  const [i1, i2] = [await nodeInfo(n1), await nodeInfo(n2)];
  await eventually(
    "two peered nodes",
    async () =>
      (await wgPeers(n1)).includes(i2.publicKey) && (await wgPeers(n2)).includes(i1.publicKey),
  );
  const log1 = () => Deno.readTextFileSync(`${n1.dir}/node.log`);
  assert.match(log1(), new RegExp(`following peers from ${lab.replicaUrl(0)}`));

  const idx = [await ifindex(n1), await ifindex(n2)];
  const f = await flow(n1.netns, i2.gateways[0] as string);
  await new Promise((r) => setTimeout(r, 300));
  await lab.stopCluster({ replica: 0, kill: true });
  await eventually(
    "node1 following replica 1",
    () => Promise.resolve(log1().includes(`following peers from ${lab.replicaUrl(1)}`)),
    20_000,
  );

  const { info: i3 } = await addNodeSeenBy(lab, 3, { by: [n1, n2], ms: 20_000 });
  const { sent, received } = await f.stop();
  assert.ok(sent > 10, `flow sent ${sent}`);
  assert.equal(received, sent, `flow lost ${sent - received} of ${sent} across the fail-over`);
  assert.deepEqual([await ifindex(n1), await ifindex(n2)], idx, "interfaces never recreated");
  for (const gw of i3.gateways) assert.ok(await ping(n1.netns, gw), `node1 → node3 ${gw}`);
  for (const n of [n1, n2]) {
    const info = await nodeInfo(n);
    assert.equal(info.connected, true, `${n.name} connected to replica 1`);
  }
}, { ignore: !hasEtcd() });
