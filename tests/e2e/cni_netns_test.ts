/**
 * CNI_NETNS must name a network namespace other than the node's own: every
 * other path is refused with code 4 before anything is allocated or started.
 */
import assert from "node:assert/strict";
import { allocations, labTest, podInterfaceExists } from "../_helpers/e2e.ts";
import type { LabNodeState } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { podWgName } from "../../modes/node/pods.ts";

const runner = new SystemRunner();

/** What ADD could change in the node's namespace: links, addresses, routes, peers, sockets. */
async function nodeState(node: LabNodeState) {
  const ns = { netns: node.netns };
  return {
    links: (JSON.parse(await runner.run(["ip", "-j", "link", "show"], ns)) as { ifname: string }[])
      .map((l) => l.ifname).sort(),
    addrs: await runner.run(["ip", "-br", "addr", "show"], ns),
    routes4: await runner.run(["ip", "-4", "route", "show", "table", "all"], ns),
    // Link-local routes come and go with the kernel's address checks (DAD), not with wgcni.
    routes6: (await runner.run(["ip", "-6", "route", "show", "table", "all"], ns)).split("\n")
      .filter((l) => !/\bfe80:/.test(l)).join("\n"),
    peers: await runner.run(["wg", "show", node.iface, "allowed-ips"], ns),
    pods: await allocations(node),
  };
}

labTest(
  "ADD refuses a CNI_NETNS that is not another network namespace, changing nothing",
  async (lab) => {
    await lab.startCluster();
    const node = await lab.addNode(1);
    const file = `${lab.state.dir}/not-a-netns`;
    await Deno.writeTextFile(file, "");
    const dir = `${lab.state.dir}/a-directory`;
    await Deno.mkdir(dir);
    const cases: [string, RegExp][] = [
      ["/proc/self/ns/net", /the node's own network namespace/],
      [`/proc/${node.pid}/ns/net`, /the node's own network namespace/],
      [file, /a regular file, not a network namespace/],
      [dir, /a directory, not a network namespace/],
      ["/dev/null", /a character device, not a network namespace/],
      ["/proc/self/ns/mnt", /a mnt namespace, not a network namespace/],
      [`/run/netns/wgcni-${lab.state.id}-missing`, /does not exist/],
    ];
    const before = await nodeState(node);
    for (const [i, [netns, msg]] of cases.entries()) {
      const id = `bad-netns-${i}`;
      const r = await lab.plugin(node, "ADD", { containerId: id, ifname: "eth0", netns });
      assert.equal(r.code, 1, `${netns}: ${r.stdout}`);
      const out = JSON.parse(r.stdout) as { code: number; msg: string };
      assert.equal(out.code, 4, `${netns}: ${out.msg}`);
      assert.match(out.msg, /CNI_NETNS/);
      assert.match(out.msg, msg);
      const wgName = await podWgName(node.iface, id, "eth0");
      assert.ok(
        !(await podInterfaceExists(wgName, { node: node.netns })),
        `no pod interface was started for ${netns}`,
      );
    }
    assert.deepEqual(await nodeState(node), before, "the node namespace is unchanged");
    // A real pod namespace still works afterwards.
    const pod = await lab.addPod(node, 1);
    assert.equal(pod.addresses.length, 2);
    await lab.deletePod(node, pod);
  },
);
