/**
 * Direct pod paths, the parts that need no network: the nftables flow sets
 * and guards, reading set elements back, and the pod directory's refusals
 * (what another node may name). The paths themselves run end to end in
 * tests/e2e/node_direct_test.ts.
 */
import assert from "node:assert/strict";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { getLogger } from "../../lib/log.ts";
import { nodeRuleset, setElements, setEntries } from "../../lib/ip/nft.ts";
import { familyRules, type NodeNetOptions } from "../../modes/node/netsetup.ts";
import { NODE_NET } from "./_node_net.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import {
  directName,
  DirectoryError,
  DirectPaths,
  receivedPackets,
} from "../../modes/node/direct.ts";
import { openPodAddresses } from "../../modes/node/addresses.ts";
import { generateKeyPair, WireGuardControl } from "../../lib/wireguard/mod.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";

const NODE: NodeNetOptions = {
  ...NODE_NET,
  masquerade: [4, 6],
  ingressFilter: [],
  podOpenPorts: [],
};

const ruleset = (flows: boolean) =>
  nodeRuleset({
    iface: "wgcni0",
    v4: familyRules(NODE, 4),
    v6: familyRules(NODE, 6),
    podOpenPorts: [],
    direct: { directoryPort: 51820, flows, flowTimeoutS: 10 },
  });

Deno.test("nodeRuleset() with direct paths records this node's pod → pod flows and guards the sockets", () => {
  const rules = ruleset(true);
  // Flows from this node's own pods to any pod, forwarded through the node interface.
  assert.match(
    rules,
    /iifname "wgcni0" oifname "wgcni0" ip saddr \{ 10\.244\.3\.0\/24 \} ip daddr \{ 10\.244\.0\.0\/16 \} update @pod_flows4 \{ ip saddr \. ip daddr \}/,
  );
  assert.match(rules, /ip6 saddr \{ fd00:10:244:3::\/64 \} .* update @pod_flows6/);
  assert.match(
    rules,
    /set pod_flows4 \{ type ipv4_addr \. ipv4_addr; flags dynamic,timeout; timeout 10s;/,
  );
  // Direct sockets: loopback and the nodes' underlay addresses only.
  assert.match(rules, /udp dport @direct_ports iifname != "lo" ip saddr != @nodes4 counter drop/);
  assert.match(rules, /udp dport @direct_ports iifname != "lo" ip6 saddr != @nodes6 counter drop/);
  // The directory only through the node interface.
  assert.match(
    rules,
    /ip daddr \{ 10\.244\.3\.1 \} tcp dport 51820 iifname != "wgcni0" counter drop/,
  );
  // The guards come before the pod filter's jump.
  assert.ok(rules.indexOf("@direct_ports") < rules.indexOf("jump from_pods"));
});

Deno.test("nodeRuleset() with --pod-paths hub keeps the guards and records no flows", () => {
  const rules = ruleset(false);
  assert.doesNotMatch(rules, /update @pod_flows/);
  assert.match(rules, /@direct_ports/);
});

Deno.test("nodeRuleset() carries the guard sets' elements over a restart", () => {
  const rules = nodeRuleset({
    iface: "wgcni0",
    v4: familyRules(NODE, 4),
    v6: familyRules(NODE, 6),
    podOpenPorts: [],
    direct: {
      directoryPort: 51820,
      flows: true,
      flowTimeoutS: 10,
      keep: { ports: [40001, 40002], nodes4: ["192.0.2.12"], nodes6: ["2001:db8::12"] },
    },
  });
  assert.match(rules, /set direct_ports \{ type inet_service; elements = \{ 40001, 40002 \}; \}/);
  assert.match(rules, /set nodes4 \{ type ipv4_addr; elements = \{ 192\.0\.2\.12 \}; \}/);
  assert.match(rules, /set nodes6 \{ type ipv6_addr; elements = \{ 2001:db8::12 \}; \}/);
});

Deno.test("setEntries() reads addresses, ports and timed concatenations as nft -j prints them", () => {
  const listed = (set: Record<string, unknown>) =>
    JSON.stringify({ nftables: [{ metainfo: { version: "1.0.6" } }, { set }] });
  assert.deepEqual(setElements(listed({ name: "nodes4", elem: ["192.0.2.12", "192.0.2.13"] })), [
    "192.0.2.12",
    "192.0.2.13",
  ]);
  assert.deepEqual(setElements(listed({ name: "direct_ports", elem: [6000, 6001] })), [6000, 6001]);
  assert.deepEqual(setElements(listed({ name: "empty" })), []);
  assert.deepEqual(
    setEntries(listed({
      name: "pod_flows4",
      elem: [{ elem: { val: { concat: ["10.244.3.2", "10.244.4.2"] }, timeout: 10, expires: 9 } }],
    })),
    [{ value: ["10.244.3.2", "10.244.4.2"], timeout: 10, expires: 9 }],
  );
  // An element of the set's own timeout is listed without one: the set's applies.
  assert.deepEqual(
    setEntries(listed({
      name: "pod_flows4",
      timeout: 10,
      elem: [{ elem: { val: { concat: ["10.244.3.2", "10.244.4.2"] }, expires: 3 } }],
    })),
    [{ value: ["10.244.3.2", "10.244.4.2"], timeout: 10, expires: 3 }],
  );
});

Deno.test("directName() is machine-unique like the pod's own creation name, and ≤ 15 bytes", () => {
  assert.equal(directName("wgp0123456789ab"), "wgx0123456789ab");
  assert.ok(directName("wgp0123456789ab").length <= 15);
});

/** A directory of a node with no pods, whose runner refuses every command (none may run). */
async function directory() {
  const dir = await Deno.makeTempDir();
  const db = openDatabase(`${dir}/node.db`);
  const store = new NodeStateStore(db);
  const runner = new RecordingRunner(() => {
    throw new Error("no command may run for a refused request");
  });
  const direct = new DirectPaths({
    runner,
    wg: new WireGuardControl(runner, { backend: "kernel" }),
    logger: getLogger("test"),
    store,
    addresses: openPodAddresses(db, NODE.subnets),
    nodeName: "node3",
    iface: "wgcni0",
    subnets: NODE.subnets,
    mtu: 1420,
    idleMs: 60_000,
    directoryPort: 51820,
    nodes: () => [NODE4],
  });
  return { direct, close: () => db.close(), runner };
}

const NODE4: PeerEntry = {
  kind: "node",
  name: "node4",
  publicKey: "x",
  endpoint: "192.0.2.14:51820",
  allowedIps: ["10.244.4.0/24", "fd00:10:244:4::/64"],
};

async function refused(p: Promise<unknown> | (() => unknown), status: number, re: RegExp) {
  await assert.rejects(
    async () => typeof p === "function" ? await p() : await p,
    (err: unknown) => {
      assert.ok(err instanceof DirectoryError, String(err));
      assert.equal(err.status, status);
      assert.match(err.message, re);
      return true;
    },
  );
}

Deno.test("the pod directory refuses what a node may not name, and changes nothing", async () => {
  const { direct, close, runner } = await directory();
  try {
    const { publicKey } = await generateKeyPair();
    const end = (addresses: string[]) => ({
      from: { addresses, publicKey, port: 40000 },
      to: "10.244.3.2",
    });
    assert.equal(direct.nodeByGateway("10.244.4.1")?.name, "node4");
    assert.equal(direct.nodeByGateway("10.244.4.2"), undefined, "a pod's address is no node");
    // Another node's subnet, the node's own gateway, two of one family.
    await refused(direct.prepare(NODE4, end(["10.244.5.2"])), 403, /own subnets/);
    await refused(direct.prepare(NODE4, end(["10.244.4.1"])), 403, /own subnets/);
    await refused(direct.prepare(NODE4, end(["10.244.4.2", "10.244.4.3"])), 403, /own subnets/);
    // Malformed ends and bodies.
    await refused(
      direct.prepare(NODE4, {
        from: { addresses: ["10.244.4.2"], publicKey: "nope", port: 1 },
        to: "10.244.3.2",
      }),
      400,
      /direct end/,
    );
    await refused(
      direct.prepare(NODE4, {
        from: { addresses: ["10.244.4.2"], publicKey, port: 70000 },
        to: "10.244.3.2",
      }),
      400,
      /direct end/,
    );
    await refused(direct.prepare(NODE4, null), 400, /from and to/);
    // A well-formed request for an address no pod here holds.
    await refused(
      direct.prepare(NODE4, end(["10.244.4.2", "fd00:10:244:4::2"])),
      404,
      /No pod of node3/,
    );
    await refused(
      () => direct.lookup(NODE4, { from: ["10.244.4.2"], to: "10.244.3.2" }),
      404,
      /direct interface/,
    );
    await refused(
      direct.routeRequest(NODE4, { from: ["10.244.4.2"], to: "10.244.3.2" }),
      404,
      /No direct peer/,
    );
    await refused(
      direct.removeRequest(NODE4, { from: ["10.244.9.2"], to: "10.244.3.2" }),
      403,
      /own subnets/,
    );
    // Removing what is not there is done already.
    await direct.removeRequest(NODE4, { from: ["10.244.4.2"], to: "10.244.3.2" });
    assert.deepEqual(runner.lines, []);
    assert.equal(direct.counts.peers, 0);
  } finally {
    close();
  }
});

Deno.test("receivedPackets() reads an interface's received packets from /proc, none for a missing one", async () => {
  const lo = await receivedPackets("lo");
  assert.ok(lo !== undefined && Number.isInteger(lo) && lo >= 0, String(lo));
  assert.equal(await receivedPackets("no-such-if0"), undefined);
});
