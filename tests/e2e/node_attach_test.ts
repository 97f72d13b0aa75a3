/**
 * A workload that brings its own WireGuard interface, end to end: a bare
 * network namespace whose interface is created, keyed and configured by
 * hand (created in the node's namespace, so its UDP socket stays there, then
 * moved in, as a VM's or a process's userspace WireGuard on the node would
 * be), attached with `wgcni node attach`, talks to a pod on another node over
 * both families, survives a node-manager restart and is cut off by
 * `wgcni node detach`.
 */
import assert from "node:assert/strict";
import {
  e2eTest,
  eventually,
  expectedBackend,
  flow,
  nodeInfo,
  ping,
  recoveredPods,
  uniqueName,
  userspaceInterfacesLeft,
  wgPeers,
} from "../_helpers/e2e.ts";
import { Lab, type LabNodeState, removeNamespace } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { getLogger } from "../../lib/log.ts";
import { generateKeyPair, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import type { WorkloadConfig } from "../../modes/node/attach.ts";

const runner = new SystemRunner();

/** What the node's local API reports of its reservations: workloads, pods, free addresses. */
async function reservations(node: LabNodeState) {
  const c = createLocalClient(node.socket);
  try {
    const a = await c.allocations();
    return {
      free: String(a.free),
      pods: (a.pods as unknown[]).length,
      workloads: a.workloads as { name: string; addresses: string[]; phase: string }[],
    };
  } finally {
    c.close();
  }
}

e2eTest(
  "a workload with its own WireGuard interface attaches, reaches pods, restarts and detaches",
  async (t) => {
    const lab = await Lab.create(runner, getLogger("test"));
    // The workload's namespace and interface carry this process's pid.
    const ns = uniqueName("wgcniwl");
    const wgName = uniqueName("wgw");
    /** Namespaces and interfaces this test made beside the lab's. */
    const made: string[] = [];
    const created: string[] = [];
    try {
      await lab.startCluster();
      const [n1, n2] = await Promise.all([lab.addNode(1), lab.addNode(2)]) as [
        LabNodeState,
        LabNodeState,
      ];
      const i1 = await nodeInfo(n1);
      const i2 = await nodeInfo(n2);
      await eventually(
        "the two nodes as peers",
        async () =>
          (await wgPeers(n1)).includes(i2.publicKey) && (await wgPeers(n2)).includes(i1.publicKey),
      );
      const remote = await lab.addPod(n2, 1);
      const before = await reservations(n1);

      const backend = await expectedBackend();
      const wg = new WireGuardControl(runner, { backend });
      const keys = await generateKeyPair();
      // Its socket in node1's namespace, on a port of its own.
      const port = 20000 + (Deno.pid % 20000);
      let config: WorkloadConfig | undefined;

      /**
       * A workload's namespace and interface made by hand: created in node1's
       * namespace and keyed there (the private key on stdin, never on a
       * command line), attached with `wgcni node attach`, configured from its
       * output, moved into its namespace.
       */
      const bringUp = async (w: {
        name: string;
        ns: string;
        wgName: string;
        keys: { privateKey: string; publicKey: string };
        port: number;
        endpointPort: boolean;
      }): Promise<WorkloadConfig> => {
        await runner.run(["ip", "netns", "add", w.ns]);
        made.push(w.ns);
        await runner.run(["ip", "link", "set", "lo", "up"], { netns: w.ns });
        await wg.create(w.wgName, { netns: n1.netns });
        created.push(w.wgName);
        await wg.configure(w.wgName, {
          privateKey: w.keys.privateKey,
          listenPort: w.port,
        }, { netns: n1.netns });
        const r = await lab.cli([
          "node",
          "attach",
          w.name,
          "--public-key",
          w.keys.publicKey,
          ...(w.endpointPort ? ["--endpoint-port", String(w.port)] : []),
          "--format",
          "json",
          "--socket",
          n1.socket,
        ], n1.netns);
        assert.equal(r.code, 0, r.stderr);
        assert.doesNotMatch(r.stdout + r.stderr, new RegExp(escape(w.keys.privateKey)));
        const c = JSON.parse(r.stdout) as WorkloadConfig;
        assert.equal(c.addresses.length, 2);
        const node = c.peers[0]!;
        await wg.setPeer(w.wgName, {
          publicKey: node.publicKey,
          endpoint: node.endpoint,
          allowedIps: node.allowedIps,
          persistentKeepalive: node.persistentKeepalive,
        }, { netns: n1.netns });
        await runner.run([
          "ip",
          "link",
          "set",
          w.wgName,
          "netns",
          `/run/netns/${w.ns}`,
          "name",
          "wg0",
          "mtu",
          String(c.mtu),
        ], { netns: n1.netns });
        const [v4, v6] = c.addresses as [string, string];
        await runner.run(["ip", "-batch", "-"], {
          netns: w.ns,
          stdin: [
            `addr add ${v4} dev wg0`,
            `addr add ${v6} dev wg0 nodad`,
            "link set wg0 up",
            "route add 0.0.0.0/0 dev wg0",
            "route add ::/0 dev wg0",
          ].join("\n") + "\n",
        });
        return c;
      };

      await t.step(
        "attached with wgcni node attach, it reaches a pod on another node over IPv4 and IPv6 and is reached from it",
        async () => {
          config = await bringUp({ name: "wl1", ns, wgName, keys, port, endpointPort: true });
          assert.equal(config.listenPort, port);
          const node = config.peers[0]!;
          assert.equal(node.publicKey, i1.publicKey);
          assert.equal(node.endpoint, `127.0.0.1:51820`);
          assert.deepEqual(node.allowedIps, ["0.0.0.0/0", "::/0"]);
          // The node has it as a peer with exactly its /32 and /128.
          const dump = await runner.run(["wg", "show", n1.iface, "allowed-ips"], {
            netns: n1.netns,
          });
          const line = dump.split("\n").find((l) => l.startsWith(keys.publicKey));
          assert.deepEqual(line?.split("\t")[1]?.split(" ").sort(), [...config.addresses].sort());
          for (const a of remote.addresses) assert.ok(await ping(ns, a), `workload → pod ${a}`);
          for (const a of config.addresses) {
            const addr = a.split("/")[0]!;
            assert.ok(await ping(remote.netns, addr), `pod on node2 → workload ${addr}`);
          }
          // As people and scripts see it.
          const status = await lab.cli(["status", "--json", "--socket", n1.socket], n1.netns);
          const s = JSON.parse(status.stdout);
          assert.deepEqual(
            s.allocations.workloads.map((w: { name: string; phase: string }) => [w.name, w.phase]),
            [["wl1", "ready"]],
          );
          assert.ok(
            s.peers.some((p: { name: string; publicKey: string }) =>
              p.name === "workload/wl1" && p.publicKey === keys.publicKey
            ),
          );
          const text = await lab.cli(["status", "--socket", n1.socket], n1.netns);
          assert.match(text.stdout, /workloads with their own interface \(1\):/);
          assert.match(text.stdout, new RegExp(`wl1 .*127\\.0\\.0\\.1:${port} +ready`));
          // Again, as wg-quick: the same addresses (attach is idempotent), no private key.
          const quick = await lab.cli([
            "node",
            "attach",
            "wl1",
            "--public-key",
            keys.publicKey,
            "--endpoint-port",
            String(port),
            "--socket",
            n1.socket,
          ], n1.netns);
          assert.equal(quick.code, 0, quick.stderr);
          assert.match(
            quick.stdout,
            new RegExp(`^Address = ${escape(config.addresses.join(", "))}$`, "m"),
          );
          assert.doesNotMatch(quick.stdout, /^PrivateKey/m);
        },
      );

      await t.step(
        "a name a pod goes by, the node's key or another workload's key is refused, nothing changed",
        async () => {
          const local = await lab.addPod(n1, 1);
          const held = await reservations(n1);
          const peers = (await wgPeers(n1)).sort();
          const other = await generateKeyPair();
          const cases: [string[], RegExp][] = [
            [
              [local.containerId, "--public-key", other.publicKey],
              /a pod of this node is attached under that name/,
            ],
            [["wl2", "--public-key", i1.publicKey], /its public key is the node's own key/],
            [["wl2", "--public-key", keys.publicKey], /its public key is workload wl1's key/],
            [["wl1", "--public-key", other.publicKey], /registered with another public key/],
          ];
          for (const [args, msg] of cases) {
            const r = await lab.cli(["node", "attach", ...args, "--socket", n1.socket], n1.netns);
            assert.equal(r.code, 1, `${args.join(" ")}: ${r.stdout}`);
            assert.match(r.stderr, msg);
            assert.equal(r.stdout, "");
          }
          assert.deepEqual(await reservations(n1), held);
          assert.deepEqual((await wgPeers(n1)).sort(), peers);
          await lab.deletePod(n1, local);
        },
      );

      await t.step(
        "a node-manager restart keeps it attached: traffic flows across it",
        async () => {
          // A second one that dials in (no endpoint port): the node learns
          // where it is from its handshake, at the node's underlay endpoint.
          const ns2 = uniqueName("wgcniwl");
          const keys2 = await generateKeyPair();
          const c2 = await bringUp({
            name: "wl3",
            ns: ns2,
            wgName: uniqueName("wgw"),
            keys: keys2,
            port: port + 1,
            endpointPort: false,
          });
          assert.equal(c2.peers[0]?.endpoint, `${n1.endpoint}:51820`);
          assert.ok(await ping(ns2, remote.addresses[1]!), "dial-in workload → pod over IPv6");
          const target = remote.addresses[0]!;
          const f = await flow(ns, target, 0.1);
          await lab.stopNode(n1, { kill: true });
          await new Promise((r) => setTimeout(r, 300));
          await lab.startNode(n1);
          await new Promise((r) => setTimeout(r, 1000));
          const { sent, received } = await f.stop();
          assert.ok(sent > 3, `flow sent ${sent}`);
          assert.ok(received >= sent - 1, `flow lost ${sent - received} of ${sent}`);
          // The restarted manager's first resync left the peer alone.
          await new Promise((r) => setTimeout(r, 500));
          const peers = await wgPeers(n1);
          assert.ok(peers.includes(keys.publicKey) && peers.includes(keys2.publicKey));
          for (const a of remote.addresses) assert.ok(await ping(ns, a), `after restart → ${a}`);
          assert.ok(await ping(ns2, remote.addresses[0]!), "dial-in workload after restart");
          const w = (await reservations(n1)).workloads;
          assert.deepEqual(w.map((x) => [x.name, x.phase]), [["wl1", "ready"], ["wl3", "ready"]]);
          assert.deepEqual(w[0]?.addresses, config?.addresses);
          // Neither was taken for a pod the node's store lost.
          assert.deepEqual(await recoveredPods(n1), []);
          const gone = await lab.cli(["node", "detach", "wl3", "--socket", n1.socket], n1.netns);
          assert.equal(gone.code, 0, gone.stderr);
          assert.equal(await ping(ns2, remote.addresses[0]!, 1), false, "wl3 cut off");
        },
      );

      await t.step("wgcni node detach cuts it off and frees its addresses", async () => {
        const r = await lab.cli(["node", "detach", "wl1", "--socket", n1.socket], n1.netns);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /detached wl1/);
        assert.ok(!(await wgPeers(n1)).includes(keys.publicKey));
        assert.equal(await ping(ns, remote.addresses[0]!, 1), false, "cut off over IPv4");
        assert.equal(await ping(ns, remote.addresses[1]!, 1), false, "cut off over IPv6");
        assert.deepEqual(await reservations(n1), before, "every address it held is free again");
        const again = await lab.cli(["node", "detach", "wl1", "--socket", n1.socket], n1.netns);
        assert.equal(again.code, 0, again.stderr);
        assert.match(again.stdout, /wl1 was not attached/);
      });
    } finally {
      for (const n of made) await removeNamespace(runner, n);
      // Never moved (a failure before the move): still in node1's namespace.
      const n1ns = lab.state.nodes[0]?.netns;
      for (const name of created) {
        if (n1ns !== undefined) await runner.exec(["ip", "link", "del", name], { netns: n1ns });
      }
      await lab.teardown();
      for (const name of created) {
        await eventually(
          `${name} gone`,
          async () => (await userspaceInterfacesLeft(name)).length === 0,
          5000,
        );
      }
    }
  },
);

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
