/**
 * The pod manager on a fake network, on both WireGuard backends, without
 * root: ADD, rollback at every step, applying a plan twice, DEL, CHECK, GC
 * and a restart's reconciliation. The same paths run on real namespaces in
 * the end-to-end groups (wireguard-go here, kernel WireGuard in the guest).
 */
import assert from "node:assert/strict";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { type Backend, generateKeyPair, WireGuardControl } from "../../lib/wireguard/mod.ts";
import { getLogger } from "../../lib/log.ts";
import { CniError } from "../../lib/cni/errors.ts";
import { openPodAddresses } from "../../modes/node/addresses.ts";
import { ownerOf, PodManager, type PodRequest } from "../../modes/node/pods.ts";
import { applyPod } from "../../modes/node/pod_network.ts";
import { planPod, POD_KEEPALIVE_S, podOps } from "../../modes/node/pod_plan.ts";
import { FakePodNetwork } from "./_fake_pod_network.ts";

const SUBNETS = ["10.244.1.0/24", "fd00:10:244:1::/64"];
const BACKENDS: Backend[] = ["kernel", "userspace"];

async function fixture(backend: Backend) {
  const dir = await Deno.makeTempDir();
  const db = openDatabase(`${dir}/node.db`);
  const store = new NodeStateStore(db);
  const addresses = openPodAddresses(db, SUBNETS);
  const node = await generateKeyPair();
  const net = new FakePodNetwork(backend, {
    iface: "wgcni0",
    publicKey: node.publicKey,
    port: 51820,
  });
  const make = () =>
    new PodManager({
      runner: new RecordingRunner(),
      wg: new WireGuardControl(new RecordingRunner()),
      logger: getLogger("test"),
      store,
      addresses,
      nodeInterface: "wgcni0",
      nodePublicKey: node.publicKey,
      nodeListenPort: 51820,
      mtu: 1380,
      network: net,
      netns: {
        inspect: (path) =>
          Promise.resolve(
            net.namespaces.has(path)
              ? { ok: true, inode: 1 }
              : { ok: false, missing: true, why: "does not exist" },
          ),
      },
      udpPorts: () => Promise.resolve(net.boundPorts()),
      // The fake network has no handshakes to wait for.
      sessionWaitMs: 0,
    });
  return {
    net,
    store,
    addresses,
    node,
    pods: make(),
    /** A new pod manager on the same state and network: a restart. */
    restart: make,
    [Symbol.asyncDispose]: async () => {
      db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function request(i: number, net: FakePodNetwork): PodRequest {
  const netns = `/run/netns/pod${i}`;
  if (!net.namespaces.has(netns)) net.addNetns(netns);
  return { containerId: `c${i}`, ifname: "eth0", netns, cniVersion: "1.1.0" };
}

/** Everything a pod is, on the fake network: its link in the pod and its peer on the node. */
function assertAttached(
  fx: Awaited<ReturnType<typeof fixture>>,
  req: PodRequest,
) {
  const record = fx.store.get(req.containerId, req.ifname);
  assert.ok(record, "a record");
  assert.equal(record.phase, "ready");
  const link = fx.net.link(req.netns, req.ifname);
  assert.ok(link, "the link in the pod under its ifname");
  assert.equal(link.up, true);
  assert.equal(link.mtu, 1380);
  assert.equal(link.publicKey, record.publicKey);
  assert.deepEqual(link.cidrs, [`${record.addresses[0]}/32`, `${record.addresses[1]}/128`]);
  assert.deepEqual(link.routes, ["0.0.0.0/0", "::/0"]);
  assert.ok(link.bound > 0, "its socket bound");
  assert.equal(record.listenPort, link.bound);
  assert.deepEqual([...link.peers.keys()], [fx.node.publicKey], "the node is its one peer");
  assert.deepEqual(link.peers.get(fx.node.publicKey), {
    endpoint: "127.0.0.1:51820",
    allowedIps: ["0.0.0.0/0", "::/0"],
    keepalive: POD_KEEPALIVE_S,
  });
  const peer = fx.net.link("", "wgcni0")!.peers.get(record.publicKey);
  assert.deepEqual(peer, {
    endpoint: `127.0.0.1:${link.bound}`,
    allowedIps: link.cidrs,
    keepalive: 0,
  });
}

/** Nothing of any pod is left: no link, no node-side peer, no record, no reservation. */
function assertNothingLeft(fx: Awaited<ReturnType<typeof fixture>>) {
  assert.deepEqual(fx.net.podLinks("wgcni0"), []);
  assert.equal(fx.net.link("", "wgcni0")!.peers.size, 0);
  assert.deepEqual(fx.store.all(), []);
  assert.deepEqual(fx.addresses.owners(), []);
}

for (const backend of BACKENDS) {
  Deno.test(`${backend}: ADD attaches a pod: link, addresses, routes, both peers, a CNI result`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    const result = await fx.pods.add(req);
    assertAttached(fx, req);
    assert.deepEqual(result.ips, [
      { address: "10.244.1.2/32", interface: 0 },
      { address: "fd00:10:244:1::2/128", interface: 0 },
    ]);
    assert.deepEqual(result.interfaces, [{
      name: "eth0",
      mac: "00:00:00:00:00:00",
      mtu: 1380,
      sandbox: req.netns,
    }]);
    // The node learnt the port after the link was up in the pod (on the
    // kernel it is bound only then).
    const order = fx.net.log.filter((l) => !l.startsWith("port"));
    const inside = order.findIndex((l) => l.startsWith("inside"));
    const nodePeer = order.findIndex((l) => l === "configure /wgcni0");
    assert.ok(inside >= 0 && nodePeer > inside, order.join("\n"));
    await fx.pods.check(req);
  });

  Deno.test(`${backend}: a failed step of ADD at any point rolls back everything`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    const before = fx.net.changes;
    await fx.pods.add(req);
    const steps = fx.net.changes - before;
    assert.ok(steps >= 5, `ADD takes ${steps} changing steps`);
    await fx.pods.del(req);
    assertNothingLeft(fx);
    for (let k = 0; k < steps; k++) {
      fx.net.failAt(k);
      await assert.rejects(fx.pods.add(req), /injected failure/, `step ${k}`);
      assertNothingLeft(fx);
    }
    // And the next ADD works.
    await fx.pods.add(req);
    assertAttached(fx, req);
  });

  Deno.test(`${backend}: applying a pod's plan again changes nothing`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    await fx.pods.add(req);
    const r = fx.store.get(req.containerId, req.ifname)!;
    const plan = planPod({
      owner: ownerOf(r.containerId, r.ifname),
      wgName: r.wgName,
      ifname: r.ifname,
      netns: r.netns,
      mtu: 1380,
      publicKey: r.publicKey,
      addresses: r.addresses,
      nodeInterface: "wgcni0",
      nodePublicKey: fx.node.publicKey,
      nodeListenPort: 51820,
    });
    const seen = await fx.net.see(r, r.publicKey, "wgcni0");
    assert.deepEqual(podOps(plan, seen), []);
    const changes = fx.net.changes;
    await applyPod(fx.net, plan, seen, podOps(plan, seen));
    assert.equal(fx.net.changes, changes, "no operation");
    // A part taken away is all a second apply does.
    fx.net.link(req.netns, "eth0")!.routes = ["0.0.0.0/0"];
    const ops = podOps(plan, await fx.net.see(r, r.publicKey, "wgcni0"));
    assert.deepEqual(ops.map((o) => o.op), ["route", "nodePeer", "keepalive"]);
    await applyPod(fx.net, plan, await fx.net.see(r, r.publicKey, "wgcni0"), ops);
    assertAttached(fx, req);
    assert.deepEqual(podOps(plan, await fx.net.see(r, r.publicKey, "wgcni0")), []);
  });

  Deno.test(`${backend}: DEL removes everything, twice is fine, an unknown one too`, async () => {
    await using fx = await fixture(backend);
    const [a, b] = [request(1, fx.net), request(2, fx.net)];
    await fx.pods.add(a);
    await fx.pods.add(b);
    await fx.pods.del(a);
    await fx.pods.del(a);
    await fx.pods.del({ containerId: "nosuch", ifname: "eth0", netns: "/run/netns/none" });
    assertAttached(fx, b);
    assert.equal(fx.net.link(a.netns, "eth0"), undefined);
    await fx.pods.del(b);
    assertNothingLeft(fx);
  });

  Deno.test(`${backend}: a second ADD of the same attachment is refused and changes nothing`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    await fx.pods.add(req);
    const changes = fx.net.changes;
    await assert.rejects(fx.pods.add(req), /already attached/);
    assert.equal(fx.net.changes, changes);
    assertAttached(fx, req);
  });

  Deno.test(`${backend}: an ifname taken in the pod fails ADD and leaves the other link alone`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    await fx.pods.add(req);
    const other = { ...req, containerId: "c-other" };
    await assert.rejects(fx.pods.add(other), /File exists/);
    assertAttached(fx, req);
    assert.deepEqual(fx.net.podLinks("wgcni0"), [`${req.netns}/eth0`]);
  });

  Deno.test(`${backend}: CHECK names what is missing`, async () => {
    await using fx = await fixture(backend);
    const req = request(1, fx.net);
    await fx.pods.add(req);
    const r = fx.store.get(req.containerId, req.ifname)!;
    const link = fx.net.link(req.netns, "eth0")!;
    const node = fx.net.link("", "wgcni0")!;
    const broken: [string, () => () => void, RegExp][] = [
      ["address", () => {
        const was = link.cidrs;
        link.cidrs = was.slice(1);
        return () => link.cidrs = was;
      }, /address 10\.244\.1\.2\/32 is missing/],
      ["route", () => {
        const was = link.routes;
        link.routes = ["0.0.0.0/0"];
        return () => link.routes = was;
      }, /default route ::\/0 via eth0 is missing/],
      ["node peer", () => {
        const was = node.peers.get(r.publicKey)!;
        node.peers.delete(r.publicKey);
        return () => node.peers.set(r.publicKey, was);
      }, /node-side peer is missing or differs/],
      ["down", () => {
        link.up = false;
        return () => link.up = true;
      }, /eth0 is down/],
    ];
    for (const [what, breakIt, message] of broken) {
      const mend = breakIt();
      await assert.rejects(
        fx.pods.check(req),
        (err: unknown) => err instanceof CniError && message.test(err.message),
        what,
      );
      mend();
      await fx.pods.check(req);
    }
    fx.net.namespaces.get(req.netns)!.delete("eth0");
    await assert.rejects(fx.pods.check(req), /interface eth0 is missing/);
    await assert.rejects(
      fx.pods.check({ ...req, containerId: "nosuch" }),
      /no attachment is known/,
    );
  });

  Deno.test(`${backend}: GC releases what the runtime no longer lists`, async () => {
    await using fx = await fixture(backend);
    const [a, b] = [request(1, fx.net), request(2, fx.net)];
    await fx.pods.add(a);
    await fx.pods.add(b);
    const gc = await fx.pods.gc([{ containerId: b.containerId, ifname: b.ifname }]);
    assert.deepEqual(gc, { released: [{ containerId: "c1", ifname: "eth0" }], failed: [] });
    assertAttached(fx, b);
    assert.equal(fx.net.link(a.netns, "eth0"), undefined);
    assert.equal(fx.addresses.get(ownerOf("c1", "eth0")), undefined);
  });

  Deno.test(`${backend}: a restart rolls back a half-done ADD, releases gone pods, restores lost peers`, async () => {
    await using fx = await fixture(backend);
    const [live, gone, lostPeer, half] = [1, 2, 3, 4].map((i) => request(i, fx.net)) as [
      PodRequest,
      PodRequest,
      PodRequest,
      PodRequest,
    ];
    for (const r of [live, gone, lostPeer]) await fx.pods.add(r);
    // An ADD cut short after the move, as a kill of the node manager leaves it.
    const key = await generateKeyPair();
    fx.store.transaction(() => {
      const addresses = fx.addresses.allocate(ownerOf(half.containerId, half.ifname));
      fx.store.put({
        containerId: half.containerId,
        ifname: half.ifname,
        netns: half.netns,
        phase: "adding",
        wgName: "wgphalf",
        publicKey: key.publicKey,
        addresses,
        listenPort: 0,
        createdAt: Date.now(),
      });
    });
    await fx.net.createLink("wgphalf");
    await fx.net.move("wgphalf", half.netns, "eth0", 1380);
    // The pod of `gone` was deleted with its namespace; `lostPeer` lost its node-side peer.
    fx.net.deleteNetns(gone.netns);
    const lost = fx.store.get(lostPeer.containerId, lostPeer.ifname)!;
    fx.net.link("", "wgcni0")!.peers.delete(lost.publicKey);

    const result = await fx.restart().reconcile();
    assert.deepEqual(result, {
      rolledBack: 1,
      finished: 0,
      released: 1,
      restored: 1,
      recovered: 0,
    });
    assertAttached(fx, live);
    assertAttached(fx, lostPeer);
    assert.equal(fx.store.get(gone.containerId, gone.ifname), undefined);
    assert.equal(fx.store.get(half.containerId, half.ifname), undefined);
    assert.equal(fx.net.link(half.netns, "eth0"), undefined, "the half-done link is deleted");
    assert.deepEqual(
      fx.addresses.owners().sort(),
      [ownerOf("c1", "eth0"), ownerOf("c3", "eth0")].sort(),
    );
    // Reconciling again changes nothing.
    const changes = fx.net.changes;
    assert.deepEqual(await fx.restart().reconcile(), {
      rolledBack: 0,
      finished: 0,
      released: 0,
      restored: 0,
      recovered: 0,
    });
    assert.equal(fx.net.changes, changes);
  });
}

Deno.test("kernel: the port is read only once the link is up in the pod (none before)", async () => {
  await using fx = await fixture("kernel");
  const req = request(1, fx.net);
  await fx.net.createLink("wgpx");
  await fx.net.configure({ name: "wgpx" }, {
    privateKey: (await generateKeyPair()).privateKey,
    listenPort: 0,
  });
  assert.equal(await fx.net.listenPort({ name: "wgpx" }), 0, "down: no port");
  await fx.net.move("wgpx", req.netns, "eth0", 1380);
  await fx.net.inside(req.netns, "eth0", [{ op: "up" }]);
  assert.ok((await fx.net.listenPort({ name: "eth0", netns: req.netns })) > 0);
  // A wireguard-go device is not found by its name in the pod, only by its creation name.
  await using go = await fixture("userspace");
  const r2 = request(1, go.net);
  await go.pods.add(r2);
  const rec = go.store.get(r2.containerId, r2.ifname)!;
  await assert.rejects(go.net.listenPort({ name: "eth0", netns: r2.netns }), /No such device/);
  assert.equal(await go.net.listenPort({ name: rec.wgName }), rec.listenPort);
});

for (const backend of ["kernel", "userspace"] as const) {
  Deno.test(`${backend}: pods get a new key; a rotation cut short is finished or dropped at a restart`, async () => {
    await using fx = await fixture(backend);
    const reqs = [request(1, fx.net), request(2, fx.net)];
    for (const r of reqs) await fx.pods.add(r);
    const before = reqs.map((r) => fx.store.get(r.containerId, r.ifname)!.publicKey);
    // None is a day old yet.
    assert.equal(await fx.pods.rotateKeys(86_400_000), 0);
    assert.equal(await fx.pods.rotateKeys(0), 2);
    for (const [i, r] of reqs.entries()) {
      const rec = fx.store.get(r.containerId, r.ifname)!;
      assert.notEqual(rec.publicKey, before[i]);
      assert.equal(rec.nextPublicKey, undefined);
      assert.ok(rec.keyedAt !== undefined);
      assertAttached(fx, r);
      assert.ok(!fx.net.link("", "wgcni0")!.peers.has(before[i]!), "the old key is gone");
    }
    // Cut short after the pod's interface took the next key: finished at the restart.
    const r1 = fx.store.get("c1", "eth0")!;
    const k1 = await generateKeyPair();
    fx.store.put({ ...r1, nextPublicKey: k1.publicKey });
    fx.net.link(reqs[0]!.netns, "eth0")!.publicKey = k1.publicKey;
    // Cut short before it did: dropped.
    const r2 = fx.store.get("c2", "eth0")!;
    fx.store.put({ ...r2, nextPublicKey: (await generateKeyPair()).publicKey });
    await fx.restart().reconcile();
    assert.equal(fx.store.get("c1", "eth0")?.publicKey, k1.publicKey);
    assert.equal(fx.store.get("c2", "eth0")?.publicKey, r2.publicKey);
    for (const r of reqs) {
      assert.equal(fx.store.get(r.containerId, r.ifname)?.nextPublicKey, undefined);
      assertAttached(fx, r);
    }
    assert.ok(!fx.net.link("", "wgcni0")!.peers.has(r1.publicKey));
  });

  Deno.test(`${backend}: a new node key moves every pod's node peer, the old key goes`, async () => {
    await using fx = await fixture(backend);
    const reqs = [request(1, fx.net), request(2, fx.net)];
    for (const r of reqs) await fx.pods.add(r);
    const next = await generateKeyPair();
    assert.equal(await fx.pods.useNodeKey(fx.node.publicKey, next.publicKey), 2);
    for (const r of reqs) {
      const link = fx.net.link(r.netns, r.ifname)!;
      assert.deepEqual([...link.peers.keys()], [next.publicKey]);
      assert.equal(link.peers.get(next.publicKey)?.keepalive, POD_KEEPALIVE_S);
    }
  });
}
