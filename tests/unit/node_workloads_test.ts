import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { RecordingRunner } from "../../lib/ip/runner.ts";
import { generateKeyPair, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { NodeStateStore, type PodRecord } from "../../lib/store/node_state.ts";
import { ConflictError, NotFoundError, PoolExhaustedError } from "../../lib/errors.ts";
import { openPodAddresses } from "../../modes/node/addresses.ts";
import { ownerOf, PodManager } from "../../modes/node/pods.ts";
import { knownWorkloads, WorkloadManager, workloadOwner } from "../../modes/node/workloads.ts";
import { planPeers } from "../../modes/node/mesh.ts";
import { getLogger, type Logger } from "../../lib/log.ts";

const IFACE = "wgcni0";
const SUBNETS = ["10.244.1.0/24", "fd00:10:244:1::/64"];

/** The node interface's peers as `wg` would keep them, driven by `wg set` and read by `wg show dump`. */
class FakeInterface {
  readonly peers = new Map<string, { endpoint: string | null; allowedIps: string[] }>();
  failSet = false;
  readonly runner = new RecordingRunner((argv) => {
    if (argv[0] !== "wg") return undefined;
    if (argv[1] === "show" && argv[3] === "dump") {
      const lines = [`(hidden)\tNODEKEY\t51820\toff`];
      for (const [key, p] of this.peers) {
        lines.push(
          [
            key,
            "(none)",
            p.endpoint ?? "(none)",
            p.allowedIps.join(",") || "(none)",
            "0",
            "0",
            "0",
            "off",
          ].join("\t"),
        );
      }
      return { stdout: lines.join("\n") + "\n" };
    }
    if (argv[1] === "set") {
      if (this.failSet && !argv.includes("remove")) return { code: 1, stderr: "Operation failed" };
      let key = "";
      for (let i = 3; i < argv.length; i++) {
        const a = argv[i];
        if (a === "peer") {
          key = argv[++i] as string;
          if (!this.peers.has(key)) this.peers.set(key, { endpoint: null, allowedIps: [] });
        } else if (a === "remove") this.peers.delete(key);
        else if (a === "endpoint") this.peers.get(key)!.endpoint = argv[++i] as string;
        else if (a === "allowed-ips") {
          const ips = (argv[++i] as string).split(",");
          // WireGuard moves an allowed IP from whichever peer had it.
          for (const p of this.peers.values()) {
            p.allowedIps = p.allowedIps.filter((x) => !ips.includes(x));
          }
          this.peers.get(key)!.allowedIps = ips;
        } else i++;
      }
      return {};
    }
    return undefined;
  });
  readonly wg = new WireGuardControl(this.runner, {
    backend: "userspace",
    socketExchange: () => Promise.reject(new Deno.errors.NotFound("no socket here")),
  });
}

async function setup(options: { subnets?: string[] } = {}) {
  const db = new DatabaseSync(":memory:");
  const store = new NodeStateStore(db);
  const addresses = openPodAddresses(db, options.subnets ?? SUBNETS);
  const net = new FakeInterface();
  const node = await generateKeyPair();
  const podKeys = new Set<string>();
  const logger: Logger = getLogger("test");
  const workloads = new WorkloadManager({
    wg: net.wg,
    logger,
    store,
    addresses,
    nodeName: "node1",
    nodeInterface: IFACE,
    nodePublicKey: node.publicKey,
    nodeListenPort: 51820,
    nodeEndpoint: "192.0.2.11:51820",
    mtu: 1420,
    clusterCidrs: ["10.244.0.0/16", "fd00:10:244::/56", "10.250.0.0/24"],
    podKeys: () => podKeys,
  });
  return { db, store, addresses, net, node, podKeys, workloads, logger };
}

const key = async () => (await generateKeyPair()).publicKey;

function pod(containerId: string, publicKey: string, podName?: string): PodRecord {
  return {
    containerId,
    ifname: "eth0",
    netns: `/run/netns/${containerId}`,
    phase: "ready",
    wgName: `wgp${containerId}`,
    publicKey,
    addresses: ["10.244.1.200"],
    listenPort: 40200,
    createdAt: 1,
    ...(podName !== undefined ? { podName } : {}),
  };
}

Deno.test("allocate() gives a workload one address per family, the same on every call", async () => {
  const { workloads, addresses } = await setup();
  const first = await workloads.allocate("vm-1");
  assert.equal(first.created, true);
  assert.equal(first.addresses.length, 2);
  assert.match(first.addresses[0]!, /^10\.244\.1\.\d+\/32$/);
  assert.match(first.addresses[1]!, /^fd00:10:244:1::[0-9a-f]+\/128$/);
  const again = await workloads.allocate("vm-1");
  assert.deepEqual(again, { ...first, created: false });
  assert.deepEqual(addresses.owners(), [workloadOwner("vm-1")]);
  assert.equal(workloadOwner("vm-1"), "@vm-1");
});

Deno.test("concurrent allocate() calls for one workload make exactly one allocation", async () => {
  const { workloads, addresses } = await setup();
  const all = await Promise.all(Array.from({ length: 10 }, () => workloads.allocate("vm-1")));
  assert.equal(all.filter((a) => a.created).length, 1);
  assert.equal(new Set(all.map((a) => a.addresses.join())).size, 1);
  assert.equal(addresses.usage()[0]?.used, 1);
});

Deno.test("register() makes the key a peer with exactly the workload's /32 and /128", async () => {
  const { workloads, net, store } = await setup();
  const { addresses } = await workloads.allocate("vm-1");
  const k = await key();
  const v = await workloads.register("vm-1", { publicKey: k });
  assert.equal(v.phase, "ready");
  assert.deepEqual(net.peers.get(k), { endpoint: null, allowedIps: addresses });
  // The same key again changes nothing but an endpoint port given now.
  await workloads.register("vm-1", { publicKey: k, endpointPort: 40001 });
  assert.deepEqual(net.peers.get(k), { endpoint: "127.0.0.1:40001", allowedIps: addresses });
  assert.equal(store.workload("vm-1")?.endpointPort, 40001);
  assert.equal(net.peers.size, 1);
});

Deno.test("peers() names the node on loopback for a local socket, else at its underlay endpoint", async () => {
  const { workloads, node } = await setup();
  await workloads.allocate("vm-1");
  await assert.rejects(workloads.peers("vm-1"), ConflictError, "no key yet");
  await workloads.register("vm-1", { publicKey: await key() });
  const remote = await workloads.peers("vm-1");
  assert.deepEqual(remote.peers, [{
    name: "node/node1",
    publicKey: node.publicKey,
    endpoint: "192.0.2.11:51820",
    allowedIps: ["0.0.0.0/0", "::/0"],
    persistentKeepalive: 25,
  }]);
  assert.equal(remote.mtu, 1420);
  assert.deepEqual(remote.clusterCidrs, ["10.244.0.0/16", "fd00:10:244::/56", "10.250.0.0/24"]);
  await workloads.allocate("vm-2");
  await workloads.register("vm-2", { publicKey: await key(), endpointPort: 40002 });
  assert.equal((await workloads.peers("vm-2")).peers[0]?.endpoint, "127.0.0.1:51820");
  await assert.rejects(workloads.peers("nobody"), NotFoundError);
});

Deno.test("register() refuses colliding keys and changes nothing", async () => {
  const { workloads, net, store, node, podKeys } = await setup();
  await workloads.allocate("vm-1");
  const mine = await key();
  await workloads.register("vm-1", { publicKey: mine });
  await workloads.allocate("vm-2");
  const podKey = await key();
  podKeys.add(podKey);
  const meshKey = await key();
  net.peers.set(meshKey, { endpoint: "192.0.2.12:51820", allowedIps: ["10.244.2.0/24"] });
  const cases: [string, RegExp][] = [
    [node.publicKey, /the node's own key/],
    [podKey, /the key of a pod of this node/],
    [mine, /workload vm-1's key/],
    [meshKey, /already a peer of wgcni0/],
  ];
  const before = JSON.stringify([...net.peers]);
  for (const [k, msg] of cases) {
    await assert.rejects(workloads.register("vm-2", { publicKey: k }), (err: Error) => {
      assert.ok(err instanceof ConflictError, String(err));
      assert.match(err.message, msg);
      assert.ok(!err.message.includes(k), "the key is not echoed");
      return true;
    });
  }
  assert.equal(JSON.stringify([...net.peers]), before);
  assert.equal(store.workload("vm-2")?.phase, "allocated");
  assert.equal(store.workload("vm-2")?.publicKey, undefined);
  // Another key for a registered workload, a low-order key, the node's own port.
  await assert.rejects(
    workloads.register("vm-1", { publicKey: await key() }),
    /another public key/,
  );
  await assert.rejects(
    workloads.register("vm-2", { publicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }),
    /low-order/,
  );
  await assert.rejects(
    workloads.register("vm-2", { publicKey: await key(), endpointPort: 51820 }),
    /the node interface's own port/,
  );
  await assert.rejects(workloads.register("ghost", { publicKey: await key() }), NotFoundError);
  assert.equal(JSON.stringify([...net.peers]), before);
});

Deno.test("allocate() refuses a name a pod of this node goes by, allocating nothing", async () => {
  const { workloads, store, addresses } = await setup();
  store.put(pod("web-1", await key(), "shop/frontend"));
  for (const name of ["web-1", "frontend"]) {
    await assert.rejects(workloads.allocate(name), (err: Error) => {
      assert.ok(err instanceof ConflictError);
      assert.match(err.message, /a pod of this node is attached under that name/);
      return true;
    });
  }
  assert.deepEqual(addresses.owners(), []);
  assert.deepEqual(store.workloads(), []);
});

Deno.test("a failed peer set leaves the workload as it was before register()", async () => {
  const { workloads, net, store } = await setup();
  await workloads.allocate("vm-1");
  net.failSet = true;
  await assert.rejects(workloads.register("vm-1", { publicKey: await key() }), /Operation failed/);
  assert.equal(net.peers.size, 0);
  assert.equal(store.workload("vm-1")?.phase, "allocated");
  assert.equal(store.workload("vm-1")?.publicKey, undefined);
});

Deno.test("release() undoes all of it; an unknown name is no error", async () => {
  const { workloads, net, store, addresses } = await setup({ subnets: ["10.244.1.0/30"] });
  const { addresses: held } = await workloads.allocate("vm-1");
  const k = await key();
  await workloads.register("vm-1", { publicKey: k });
  // A /30 has one address to hand out: the next owner gets none until the release.
  await assert.rejects(workloads.allocate("vm-2"), PoolExhaustedError);
  assert.deepEqual(await workloads.release("vm-1"), { name: "vm-1", released: true });
  assert.equal(net.peers.has(k), false);
  assert.equal(store.workload("vm-1"), undefined);
  assert.deepEqual(addresses.owners(), []);
  assert.deepEqual((await workloads.allocate("vm-2")).addresses, held, "its address is free again");
  assert.deepEqual(await workloads.release("never"), { name: "never", released: false });
});

Deno.test("reconcile() finishes a release cut short and a registration cut short", async () => {
  const { workloads, net, store, addresses } = await setup();
  const a = await workloads.allocate("going");
  const gone = await key();
  await workloads.register("going", { publicKey: gone });
  // Killed after the write-ahead of a release, before the peer went.
  store.putWorkload({ ...store.workload("going")!, phase: "releasing" });
  await workloads.allocate("coming");
  const coming = await key();
  // Killed after the write-ahead of a registration, before the peer was set.
  store.putWorkload({ ...store.workload("coming")!, phase: "registering", publicKey: coming });
  const r = await workloads.reconcile();
  assert.deepEqual(r, { released: 1, restored: 1, reserved: 0 });
  assert.equal(net.peers.has(gone), false);
  assert.equal(store.workload("going"), undefined);
  assert.ok(!addresses.owners().includes(workloadOwner("going")));
  assert.equal(store.workload("coming")?.phase, "ready");
  assert.equal(net.peers.get(coming)?.allowedIps.length, 2);
  assert.notDeepEqual(net.peers.get(coming)?.allowedIps, a.addresses);
  // In step: a second run changes nothing.
  assert.deepEqual(await workloads.reconcile(), { released: 0, restored: 0, reserved: 0 });
});

Deno.test("reconcile() puts back a lost peer and a lost reservation", async () => {
  const { workloads, net, addresses, store } = await setup();
  const { addresses: held } = await workloads.allocate("vm-1");
  const k = await key();
  await workloads.register("vm-1", { publicKey: k, endpointPort: 40001 });
  net.peers.delete(k);
  store.transaction(() => addresses.release(workloadOwner("vm-1")));
  assert.deepEqual(await workloads.reconcile(), { released: 0, restored: 1, reserved: 1 });
  assert.deepEqual(net.peers.get(k), { endpoint: "127.0.0.1:40001", allowedIps: [...held] });
  assert.deepEqual(
    addresses.get(workloadOwner("vm-1")),
    held.map((a) => a.replace(/\/\d+$/, "")),
  );
});

/** A pod manager over the same fake interface, with the workload hook as join wires it. */
function podManager(s: Awaited<ReturnType<typeof setup>>, ports: number[], hooked = true) {
  return new PodManager({
    runner: s.net.runner,
    wg: s.net.wg,
    logger: s.logger,
    store: s.store,
    addresses: s.addresses,
    nodeInterface: IFACE,
    nodePublicKey: s.node.publicKey,
    nodeListenPort: 51820,
    mtu: 1420,
    udpPorts: () => Promise.resolve(new Set(ports)),
    ...(hooked ? { others: () => knownWorkloads(s.store) } : {}),
  });
}

Deno.test("pod GC and reconcile keep workloads: neither orphans nor pods known only from the kernel", async () => {
  const s = await setup();
  const { addresses: held } = await s.workloads.allocate("vm-1");
  const k = await key();
  // Its socket on the node's loopback: a peer that looks like a pod's to the kernel.
  await s.workloads.register("vm-1", { publicKey: k, endpointPort: 40001 });
  await s.workloads.allocate("vm-2");
  const pods = podManager(s, [40001]);
  const rec = await pods.reconcile();
  assert.equal(rec.recovered, 0, "not taken for a pod the store lost");
  assert.deepEqual(pods.recovered(), []);
  const gc = await pods.gc([{ containerId: "other", ifname: "eth0" }]);
  assert.deepEqual(gc, { released: [], failed: [] });
  assert.deepEqual(s.addresses.owners().sort(), ["@vm-1", "@vm-2"]);
  assert.deepEqual(s.net.peers.get(k)?.allowedIps, held);
  // The mesh keeps them too, as join composes its keys.
  const keep = new Set([...pods.podKeys(), ...knownWorkloads(s.store).keys]);
  const ops = planPeers(
    new Map(),
    [...s.net.peers].map(([publicKey, p]) => ({ publicKey, ...p })),
    keep,
  );
  assert.deepEqual(ops, []);
  // Without the hook, GC would have taken their reservations: the hook is what keeps them.
  await podManager(s, [40001], false).gc([]);
  assert.deepEqual(s.addresses.owners(), []);
  assert.equal(ownerOf("c", "eth0"), "c/eth0");
});
