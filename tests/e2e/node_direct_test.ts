/**
 * Direct pod paths end to end, on whichever WireGuard backend the machine
 * has: pods that talk get each other as direct peers (same node and across
 * nodes) while a flow runs, with no packet lost at the switch and the node
 * interfaces no longer carrying the flow; idle paths are removed; a DEL
 * takes the pod off its peers on the other node before its address is
 * handed out again; a node-manager restart keeps a working path up;
 * `--pod-paths hub` keeps a node's pods on the hub.
 *
 * Node subnets are /29 here (five pods per node), so that a deleted pod's
 * IPv4 address is handed out again within a few ADDs.
 */
import assert from "node:assert/strict";
import {
  E2E,
  eventually,
  expectedBackend,
  scaled,
  SLOW_MACHINE,
  userspaceInterfacesLeft,
} from "../_helpers/e2e.ts";
import {
  Lab,
  type LabNodeState,
  type LabPod,
  pingFlow as labPingFlow,
} from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { getLogger } from "../../lib/log.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { generateKeyPair } from "../../lib/wireguard/mod.ts";

const runner = new SystemRunner();
/** Idle time of direct paths on the nodes that have them (short, for the idle test). */
const IDLE_S = SLOW_MACHINE ? 30 : 4;

interface DirectView {
  addresses: string[];
  node: string;
  publicKey: string;
  latestHandshake: number;
}

/** The direct peers of a pod as its node reports them. */
async function directPeers(node: LabNodeState, pod: LabPod): Promise<DirectView[]> {
  const c = createLocalClient(node.socket);
  try {
    const pods = (await c.allocations()).pods as { containerId: string; direct?: DirectView[] }[];
    return pods.find((p) => p.containerId === pod.containerId)?.direct ?? [];
  } finally {
    c.close();
  }
}

/** The direct-path lines at the end of the nodes' logs, for a failure message. */
async function directLog(...nodes: LabNodeState[]): Promise<string> {
  const lines: string[] = [];
  for (const n of nodes) {
    const text = await Deno.readTextFile(`${n.dir}/node.log`).catch(() => "");
    lines.push(
      ...text.split("\n").filter((l) => /direct/i.test(l)).slice(-20).map((l) => `${n.name}: ${l}`),
    );
  }
  return lines.join("\n");
}

/**
 * `pod`'s direct peer at `to`, sending to it until there is one (a
 * promotion can outlast a flow under emulation). Fails with the nodes'
 * direct-path log.
 */
async function directPeerUntil(
  node: LabNodeState,
  pod: LabPod,
  to: string,
  nodes: LabNodeState[],
): Promise<DirectView> {
  const end = Date.now() + scaled(20_000);
  for (;;) {
    const p = (await directPeers(node, pod)).find((x) => x.addresses[0] === to);
    if (p !== undefined) return p;
    if (Date.now() > end) {
      assert.fail(`${pod.name} has no direct peer at ${to}\n${await directLog(...nodes)}`);
    }
    await pingFlow(pod, to, 100, SLOW_MACHINE ? 0.05 : 0.01);
  }
}

/** The name of a pod's direct interface, if it has one. */
async function directLink(pod: LabPod): Promise<string | undefined> {
  const links = JSON.parse(
    await runner.run(["ip", "-j", "link", "show"], { netns: pod.netns }),
  ) as { ifname: string }[];
  return links.find((l) => l.ifname.startsWith("wgx"))?.ifname;
}

/** The peer keys of a pod's direct interface as the kernel (or wireguard-go) has them. */
async function kernelDirectKeys(node: LabNodeState, pod: LabPod): Promise<string[]> {
  const links = JSON.parse(
    await runner.run(["ip", "-j", "link", "show"], { netns: pod.netns }),
  ) as { ifname: string }[];
  const d = links.find((l) => l.ifname.startsWith("wgx"));
  if (d === undefined) return [];
  const inPod = await runner.exec(["wg", "show", d.ifname, "peers"], { netns: pod.netns });
  const out = inPod.code === 0
    ? inPod.stdout
    : (await runner.exec(["wg", "show", d.ifname, "peers"], { netns: node.netns })).stdout;
  return out.split("\n").filter(Boolean);
}

/** Bytes the node interface received from a pod's hub interface (its peer there). */
async function hubBytes(node: LabNodeState, address: string): Promise<number> {
  const dump = await runner.run(["wg", "show", node.iface, "dump"], { netns: node.netns });
  const line = dump.split("\n").slice(1).find((l) =>
    l.split("\t")[3]?.split(",").includes(`${address}/32`)
  );
  return Number(line?.split("\t")[5] ?? 0);
}

/** Pings `count` times `intervalS` apart; returns [transmitted, received]. */
function pingFlow(from: LabPod, to: string, count: number, intervalS: number) {
  return labPingFlow(runner, from.netns, to, { count, intervalS });
}

/** A flow of pings from `from` to `to` with nothing lost, long enough for the promotion. */
async function flowWithoutLoss(from: LabPod, to: string) {
  const interval = SLOW_MACHINE ? 0.02 : 0.002;
  const count = Math.round(scaled(3000) / 1000 / interval);
  const [sent, got] = await pingFlow(from, to, count, interval);
  assert.equal(got, sent, `${sent - got} of ${sent} packets from ${from.name} to ${to} were lost`);
}

Deno.test({
  name:
    "direct pod paths: promotion under a flow, idle removal, DEL before reuse, restart, hub mode",
  ignore: !E2E,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const lab = await Lab.create(runner, getLogger("test"));
    try {
      await lab.startCluster({ args: ["--node-mask-v4", "29"] });
      const joinArgs = ["--direct-idle", `${IDLE_S}s`];
      const [n1, n2] = await Promise.all([
        lab.addNode(1, { joinArgs }),
        lab.addNode(2, { joinArgs }),
      ]) as [LabNodeState, LabNodeState];
      const a = await lab.addPod(n1, 1);
      const c = await lab.addPod(n1, 2);
      const b = await lab.addPod(n2, 1);
      await eventually("the hub path between the nodes", () => lab.ping(a, b.addresses[0]!));

      await t.step(
        "across nodes: a flow is promoted with nothing lost, off the node interfaces",
        async () => {
          await flowWithoutLoss(a, b.addresses[0]!);
          const [ab] = await directPeers(n1, a);
          const [ba] = await directPeers(n2, b);
          assert.deepEqual(ab?.addresses, b.addresses);
          assert.equal(ab?.node, "node2");
          assert.deepEqual(ba?.addresses, a.addresses);
          assert.ok((ab?.latestHandshake ?? 0) > 0, "a's direct peer b has a handshake");
          // IPv6 goes the same way: one pair, both families.
          assert.ok(await lab.ping(a, b.addresses[1]!, { count: 3 }));
          // The flow no longer passes through the node interfaces.
          const before = await hubBytes(n1, a.addresses[0]!);
          await pingFlow(a, b.addresses[0]!, 200, 0.005);
          const after = await hubBytes(n1, a.addresses[0]!);
          assert.ok(
            after - before < 200 * 84 / 4,
            `node1 still carried ${after - before} bytes of the flow`,
          );
        },
      );

      await t.step("on the same node: promoted with nothing lost", async () => {
        await flowWithoutLoss(a, c.addresses[0]!);
        const peers = await directPeers(n1, a);
        assert.ok(peers.some((p) => p.addresses[0] === c.addresses[0] && p.node === "node1"));
        assert.ok((await directPeers(n1, c)).some((p) => p.addresses[0] === a.addresses[0]));
      });

      await t.step(
        "idle paths are removed on both sides; the hub still carries the pair",
        async () => {
          await eventually(
            "the idle direct peers removed",
            async () =>
              (await directPeers(n1, a)).length === 0 && (await directPeers(n2, b)).length === 0 &&
              (await directPeers(n1, c)).length === 0,
            (IDLE_S + 20) * 1000,
          );
          assert.deepEqual(await kernelDirectKeys(n1, a), []);
          assert.ok(await lab.ping(a, b.addresses[0]!, { count: 2 }));
        },
      );

      await t.step("a node-manager restart keeps a working direct path up", async () => {
        await flowWithoutLoss(a, b.addresses[0]!);
        const toB = async () =>
          (await directPeers(n1, a)).find((p) => p.addresses[0] === b.addresses[0]);
        const key = (await toB())?.publicKey;
        assert.ok(key);
        // A flow runs across the restart of node1's manager.
        const interval = SLOW_MACHINE ? 0.05 : 0.01;
        const flow = pingFlow(
          a,
          b.addresses[0]!,
          Math.round(scaled(6000) / 1000 / interval),
          interval,
        );
        await lab.stopNode(n1);
        await lab.startNode(n1);
        const [sent, got] = await flow;
        assert.equal(got, sent, `${sent - got} of ${sent} lost across the restart`);
        assert.equal((await toB())?.publicKey, key);
        assert.ok((await kernelDirectKeys(n1, a)).includes(key));
      });

      await t.step(
        "CHECK brings direct peers in line: strangers go, a lost interface ends the pair",
        async () => {
          const check = () =>
            lab.plugin(n1, "CHECK", {
              containerId: a.containerId,
              ifname: a.ifname,
              netns: `/run/netns/${a.netns}`,
              extra: {
                prevResult: {
                  cniVersion: "1.1.0",
                  interfaces: [{ name: a.ifname, sandbox: `/run/netns/${a.netns}` }],
                  ips: a.addresses.map((x) => ({
                    address: `${x}/${x.includes(":") ? 128 : 32}`,
                    interface: 0,
                  })),
                },
              },
            });
          const dev = await directLink(a);
          assert.ok(dev, "a has a direct interface");
          const stranger = (await generateKeyPair()).publicKey;
          const where = (await expectedBackend()) === "kernel" ? a.netns : n1.netns;
          await runner.run(["wg", "set", dev, "peer", stranger, "allowed-ips", "10.9.9.9/32"], {
            netns: where,
          });
          let r = await check();
          assert.equal(r.code, 0, r.stdout + r.stderr);
          assert.ok(!(await kernelDirectKeys(n1, a)).includes(stranger), "the stranger is gone");
          assert.ok((await directPeers(n1, a)).some((p) => p.addresses[0] === b.addresses[0]));
          // The direct interface deleted behind the node's back: the pair ends on both sides.
          await runner.run(["ip", "link", "del", dev], { netns: a.netns });
          r = await check();
          assert.equal(r.code, 0, r.stdout + r.stderr);
          assert.deepEqual(await directPeers(n1, a), []);
          await eventually(
            "b's side of the pair ended",
            async () => !(await directPeers(n2, b)).some((p) => p.addresses[0] === a.addresses[0]),
          );
          assert.ok(await lab.ping(a, b.addresses[0]!, { count: 2 }), "the hub carries the pair");
        },
      );

      await t.step(
        "DEL takes the pod off its direct peers on the other node before its address is reused",
        async () => {
          await flowWithoutLoss(a, b.addresses[0]!);
          const oldKey = (await directPeerUntil(n1, a, b.addresses[0]!, [n1, n2])).publicKey;
          await lab.deletePod(n2, b);
          assert.ok(
            !(await kernelDirectKeys(n1, a)).includes(oldKey),
            "a still has b's direct key",
          );
          assert.ok(!(await directPeers(n1, a)).some((p) => p.addresses[0] === b.addresses[0]));
          // The /29 has five pod addresses: the fifth ADD on node2 gets b's again.
          let again: LabPod | undefined;
          for (let i = 2; i <= 6 && again === undefined; i++) {
            const p = await lab.addPod(n2, i);
            if (p.addresses[0] === b.addresses[0]) again = p;
          }
          assert.ok(again, `no new pod got ${b.addresses[0]} again`);
          // The new pod there is reached, over the hub and then directly with its own key.
          await flowWithoutLoss(a, again.addresses[0]!);
          const now = await directPeerUntil(n1, a, again.addresses[0]!, [n1, n2]);
          assert.notEqual(now.publicKey, oldKey, "a has b's old key for the new pod");
        },
      );

      await t.step(
        "a DEL while the other node is down holds the addresses until it confirms",
        async () => {
          // node2's /29 is full after the reuse above: one pod makes room.
          await lab.deletePod(n2, n2.pods[n2.pods.length - 1]!);
          const x = await lab.addPod(n2, 7);
          await flowWithoutLoss(a, x.addresses[0]!);
          const key = (await directPeers(n1, a)).find((p) => p.addresses[0] === x.addresses[0])
            ?.publicKey;
          assert.ok(key);
          await lab.stopNode(n1);
          await lab.deletePod(n2, x);
          const held = async () => {
            const c = createLocalClient(n2.socket);
            try {
              return ((await c.allocations()).held ?? []) as {
                addresses: string[];
                node: string;
              }[];
            } finally {
              c.close();
            }
          };
          assert.deepEqual((await held()).map((h) => [h.node, h.addresses]), [[
            "node1",
            x.addresses,
          ]]);
          await lab.startNode(n1);
          await eventually(
            "node1 confirmed and the addresses are free",
            async () => (await held()).length === 0,
            30_000,
          );
          assert.ok(!(await kernelDirectKeys(n1, a)).includes(key), "a still has x's direct key");
        },
      );

      await t.step(
        "direct sockets accept packets from the nodes' underlay addresses only",
        async () => {
          const ports = await runner.run(
            ["nft", "-j", "list", "set", "inet", "wgcni", "direct_ports"],
            { netns: n1.netns },
          );
          const port = Number(JSON.parse(ports).nftables[1].set.elem[0]);
          assert.ok(port > 0, "node1 has a direct socket");
          const dropped = async () => {
            const chain = await runner.run(["nft", "list", "chain", "inet", "wgcni", "input"], {
              netns: n1.netns,
            });
            return Number(chain.match(/ip saddr != @nodes4 counter packets (\d+)/)?.[1] ?? NaN);
          };
          const send = (netns: string) =>
            runner.run([
              "bash",
              "-c",
              `for i in 1 2 3; do echo x > /dev/udp/${n1.endpoint}/${port}; done`,
            ], {
              netns,
            });
          const before = await dropped();
          await send(n2.netns);
          assert.equal(await dropped(), before, "a node's packets pass");
          const outsider = await lab.addHost("outsider", 1);
          await send(outsider.netns);
          // They leave once the outsider has resolved node1's underlay address.
          await eventually(
            "an outsider's packets dropped",
            async () => await dropped() === before + 3,
          );
        },
      );

      await t.step("--pod-paths hub keeps a node's pods on the hub", async () => {
        const n3 = await lab.addNode(3, { joinArgs: ["--pod-paths", "hub"] });
        const e = await lab.addPod(n3, 1);
        await eventually("the hub path to node3", () => lab.ping(e, a.addresses[0]!));
        await pingFlow(e, a.addresses[0]!, 100, 0.01);
        await pingFlow(a, e.addresses[0]!, 100, 0.01);
        assert.deepEqual(await directPeers(n3, e), []);
        assert.ok(!(await directPeers(n1, a)).some((p) => p.addresses[0] === e.addresses[0]));
      });
    } finally {
      await lab.teardown();
    }
    assert.deepEqual(await userspaceInterfacesLeft("wgx"), []);
  },
});
