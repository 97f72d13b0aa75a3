/**
 * A real container runtime: podman (CNI backend, runc, a busybox root
 * filesystem) runs one container on each of two simulated nodes with the
 * conflist each node manager wrote; they reach each other over the mesh,
 * and removing them leaves no reservation, peer or interface.
 */
import assert from "node:assert/strict";
import {
  allocations as pods,
  E2E,
  e2eTest,
  eventually,
  podInterfaceExists,
  waitS,
} from "../_helpers/e2e.ts";
import { Lab, type LabNodeState } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { getLogger } from "../../lib/log.ts";
import { podWgName } from "../../modes/node/pods.ts";

const runner = new SystemRunner();
const has = async (tool: string) =>
  (await runner.exec(["sh", "-c", `command -v ${tool}`])).code === 0;
const ready = E2E && await has("podman") && await has("runc") && await has("busybox");

e2eTest(
  "podman containers on two nodes reach each other over the mesh and leave nothing behind",
  async () => {
    const lab = await Lab.create(runner, getLogger("test"));
    const dir = `${lab.state.dir}/podman`;
    // Podman limits the run root's path length.
    const short = await Deno.makeTempDir({ prefix: "wpm" });
    try {
      await lab.startCluster();
      const nodes = [await lab.addNode(1), await lab.addNode(2)];
      const rootfs = `${dir}/rootfs`;
      await Deno.mkdir(`${rootfs}/bin`, { recursive: true });
      for (const d of ["etc", "proc", "sys", "dev", "tmp"]) await Deno.mkdir(`${rootfs}/${d}`);
      const busybox = (await runner.run(["sh", "-c", "command -v busybox"])).trim();
      await Deno.copyFile(busybox, `${rootfs}/bin/busybox`);
      await Deno.chmod(`${rootfs}/bin/busybox`, 0o755);
      for (const t of ["sh", "sleep", "ping"]) await Deno.symlink("busybox", `${rootfs}/bin/${t}`);
      const podman = async (node: LabNodeState, args: string[]) => {
        const conf = `${dir}/containers-${node.name}.conf`;
        await Deno.writeTextFile(
          conf,
          [
            "[network]",
            'network_backend = "cni"',
            `cni_plugin_dirs = ["${node.dir}/bin", "/usr/lib/cni"]`,
            "[containers]",
            'default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]',
            "[engine]",
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
          ].join("\n") + "\n",
        );
        return await runner.exec([
          "podman",
          "--root",
          `${short}/root`,
          "--runroot",
          `${short}/run`,
          "--network-config-dir",
          `${node.dir}/net.d`,
          ...args,
        ], { netns: node.netns, env: { CONTAINERS_CONF: conf } });
      };
      const names = [`c${lab.state.id}1`, `c${lab.state.id}2`];
      const podIfaces: string[] = [];
      try {
        for (const [i, node] of nodes.entries()) {
          const r = await podman(node, [
            "run",
            "-d",
            "--name",
            names[i] as string,
            "--runtime",
            "runc",
            "--network",
            "wgcni",
            "--rootfs",
            rootfs,
            "/bin/sleep",
            "600",
          ]);
          assert.equal(r.code, 0, r.stderr);
        }
        const [p1, p2] = [await pods(nodes[0]!), await pods(nodes[1]!)];
        assert.equal(p1.length, 1);
        assert.equal(p2.length, 1);
        podIfaces.push(
          await podWgName(nodes[0]!.iface, p1[0]!.containerId, "eth0"),
          await podWgName(nodes[1]!.iface, p2[0]!.containerId, "eth0"),
        );
        for (const addr of p2[0]!.addresses) {
          const ping = await podman(nodes[0]!, [
            "exec",
            names[0] as string,
            "ping",
            "-c",
            "2",
            "-W",
            waitS(),
            addr,
          ]);
          assert.equal(ping.code, 0, `container on node1 → ${addr}: ${ping.stdout}${ping.stderr}`);
        }
      } finally {
        for (const [i, node] of nodes.entries()) {
          const rm = await podman(node, ["rm", "-f", "-t", "0", names[i] as string]);
          assert.equal(rm.code, 0, rm.stderr);
        }
      }
      for (const node of nodes) {
        assert.deepEqual(await pods(node), []);
        const peers = await runner.run(["wg", "show", node.iface, "peers"], { netns: node.netns });
        assert.equal(peers.trim().split("\n").length, 1, "only the other node is left as a peer");
      }
      assert.equal(podIfaces.length, 2);
      for (const [i, n] of podIfaces.entries()) {
        await eventually(
          `pod interface ${n} gone`,
          async () => !(await podInterfaceExists(n, { node: nodes[i]!.netns })),
          5000,
        );
      }
    } finally {
      await lab.teardown();
      await Deno.remove(short, { recursive: true }).catch(() => {});
    }
  },
  { ignore: !ready },
);
