/**
 * A full disk under the node's state directory: ADD and DEL answer with the
 * cause (code 5, the directory named), ADD changes nothing, DEL takes the
 * pod off the network but keeps its record and reservation, and a DEL once
 * space is back finishes it. The state directory is a small tmpfs in the
 * node manager's own mount namespace; nothing is mounted on the machine.
 */
import assert from "node:assert/strict";
import { allocations, labTest, podInterfaceExists, wgPeers } from "../_helpers/e2e.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { podWgName } from "../../modes/node/pods.ts";

const runner = new SystemRunner();

labTest(
  "with the state directory full, ADD and DEL name the cause and leave state consistent",
  async (lab) => {
    await lab.startCluster();
    const node = await lab.addNode(1, { stateTmpfs: "2m" });
    const stateDir = `${node.dir}/state`;
    // Inside the node manager's mount namespace, where the tmpfs is.
    const inMounts = (argv: string[]) =>
      runner.exec(["nsenter", `--mount=/proc/${node.pid}/ns/mnt`, "--", ...argv]);
    const df = await inMounts(["df", "-P", stateDir]);
    assert.match(df.stdout, /wgcni-state/, "the state directory is the node's own tmpfs");
    const pod1 = await lab.addPod(node, 1);
    const before = await allocations(node);
    assert.equal(before.length, 1);
    const peers = await wgPeers(node);

    await inMounts(["dd", "if=/dev/zero", `of=${stateDir}/fill`, "bs=64k"]);
    const netns2 = `wgd-${lab.state.id}-full2`;
    await runner.run(["ip", "netns", "add", netns2]);
    lab.state.namespaces.push(netns2);
    const add = await lab.plugin(node, "ADD", {
      containerId: "full-2",
      ifname: "eth0",
      netns: `/run/netns/${netns2}`,
    });
    assert.equal(add.code, 1, add.stdout);
    const addErr = JSON.parse(add.stdout) as { code: number; msg: string };
    assert.equal(addErr.code, 5, addErr.msg);
    assert.match(addErr.msg, /no space left on the state directory/);
    assert.ok(addErr.msg.includes(stateDir), addErr.msg);
    assert.doesNotMatch(addErr.msg, /rollback/);
    assert.deepEqual(await allocations(node), before, "ADD reserved nothing");
    assert.deepEqual(await wgPeers(node), peers, "ADD added no peer");
    const wg2 = await podWgName(node.iface, "full-2", "eth0");
    assert.ok(
      !(await podInterfaceExists(wg2, { node: node.netns, pod: netns2 })),
      "ADD started no pod interface",
    );

    const del = await lab.plugin(node, "DEL", {
      containerId: pod1.containerId,
      ifname: "eth0",
      netns: `/run/netns/${pod1.netns}`,
    });
    assert.equal(del.code, 1, del.stdout);
    const delErr = JSON.parse(del.stdout) as { code: number; msg: string };
    assert.equal(delErr.code, 5, delErr.msg);
    assert.match(delErr.msg, /no space left on the state directory/);
    assert.match(delErr.msg, /record and addresses are kept until a DEL succeeds/);
    const link = await runner.exec(["ip", "link", "show", "eth0"], { netns: pod1.netns });
    assert.notEqual(link.code, 0, "the pod's interface is gone");
    assert.deepEqual(await wgPeers(node), [], "the pod's peer is gone");
    assert.deepEqual(await allocations(node), before, "its record and reservation stay");

    await inMounts(["rm", `${stateDir}/fill`]);
    await lab.deletePod(node, pod1);
    assert.deepEqual(await allocations(node), [], "a DEL with space back finishes it");
    const again = await lab.plugin(node, "ADD", {
      containerId: "full-2",
      ifname: "eth0",
      netns: `/run/netns/${netns2}`,
    });
    assert.equal(again.code, 0, again.stdout);
    assert.equal((await allocations(node)).length, 1);
    const done = await lab.plugin(node, "DEL", {
      containerId: "full-2",
      ifname: "eth0",
      netns: `/run/netns/${netns2}`,
    });
    assert.equal(done.code, 0, done.stdout);
    assert.deepEqual(await allocations(node), []);
    assert.deepEqual(await wgPeers(node), []);
  },
);
