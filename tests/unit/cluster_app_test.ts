/**
 * The cluster API through `app.request` (no port): every route's success,
 * refused input (400, and nothing written), missing credentials (401), wrong
 * credentials (403/409), tokens that expire or are used up.
 */
import assert from "node:assert/strict";
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StaleStoreError,
} from "../../lib/errors.ts";
import type { WatchEvent } from "../../lib/api/cluster_types.ts";
import { ADMIN, clusterFixture, type Fixture, JOIN, randomKey } from "./_cluster_fixture.ts";

function inside(cidr: string, pool: string): boolean {
  // Both are canonical; a node subnet is inside its pool when the pool's
  // leading bits match. Compare through the URL-safe ipaddr parse.
  const [a, ap] = cidr.split("/");
  const [b, bp] = pool.split("/");
  if (a === undefined || b === undefined) return false;
  if (a.includes(":") !== b.includes(":")) return false;
  return Number(ap) >= Number(bp) && prefixBits(a, Number(bp)) === prefixBits(b, Number(bp));
}

function prefixBits(addr: string, n: number): string {
  let bits = "";
  if (addr.includes(":")) {
    const [head = "", tail = ""] = addr.split("::");
    const h = head === "" ? [] : head.split(":");
    const t = tail === "" ? [] : tail.split(":");
    const groups = addr.includes("::")
      ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t]
      : h;
    for (const g of groups) bits += parseInt(g, 16).toString(2).padStart(16, "0");
  } else {
    for (const o of addr.split(".")) bits += Number(o).toString(2).padStart(8, "0");
  }
  return bits.slice(0, n);
}

async function register(fx: Fixture, name: string, token = JOIN, key = randomKey()) {
  return await fx.client(token).register({ name, publicKey: key, endpoint: "192.0.2.10:51820" });
}

/** A snapshot of everything a refused request must leave untouched. */
function stateOf(fx: Fixture) {
  return JSON.stringify({
    revision: fx.store.revision(),
    nodes: fx.store.listNodes(),
    clients: fx.store.listClients(),
    tokens: fx.store.listTokens(),
    usage: fx.store.usage(),
  });
}

Deno.test("register gives one subnet per family inside the pools and a credential", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const r = await fx.client(JOIN).register({
    name: "node-a",
    publicKey: key,
    endpoint: "192.0.2.1:51820",
  });
  assert.equal(r.node.name, "node-a");
  assert.equal(r.node.publicKey, key);
  assert.equal(r.node.endpoint, "192.0.2.1:51820");
  assert.equal(r.node.subnets.length, 2);
  assert.match(r.node.subnets[0]!, /^10\.244\.\d+\.0\/24$/);
  assert.match(r.node.subnets[1]!, /^fd00:10:244:[0-9a-f:]*\/64$/);
  assert.ok(inside(r.node.subnets[0]!, "10.244.0.0/16"));
  assert.ok(inside(r.node.subnets[1]!, "fd00:10:244::/56"));
  assert.equal(r.node.registeredAt, fx.now);
  assert.ok(r.credential.length >= 32);
  assert.deepEqual(r.cluster.podCidrs, ["10.244.0.0/16", "fd00:10:244::/56"]);
  assert.deepEqual(r.cluster.clientCidrs, ["100.64.0.0/24", "fd00:64::/120"]);
  // The credential works for this node's own routes.
  const me = await fx.client(r.credential).getNode("node-a");
  assert.deepEqual(me.subnets, r.node.subnets);
});

Deno.test("register answers 201 for a new node and 200 when it registers again", async () => {
  await using fx = await clusterFixture();
  const body = { name: "n1", publicKey: randomKey(), endpoint: "192.0.2.1:51820" };
  const first = await fx.raw("POST", "/v1/nodes", { token: JOIN, json: body });
  assert.equal(first.status, 201);
  const { credential } = await first.json() as { credential: string };
  const again = await fx.raw("POST", "/v1/nodes", { token: credential, json: body });
  assert.equal(again.status, 200);
  await again.body?.cancel();
});

Deno.test("registering again with the same name and key returns the same subnets", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const a = await register(fx, "node-a", JOIN, key);
  await register(fx, "node-b");
  const rev = fx.store.revision();
  const again = await register(fx, "node-a", a.credential, key);
  assert.deepEqual(again.node.subnets, a.node.subnets);
  assert.equal(again.node.registeredAt, a.node.registeredAt);
  assert.equal(fx.store.revision(), rev, "nothing changed for peers");
});

Deno.test("registering again with a node's own credential keeps that credential", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const a = await register(fx, "node-a", JOIN, key);
  const again = await fx.client(a.credential).register({
    name: "node-a",
    publicKey: key,
    endpoint: "192.0.2.99:51820",
  });
  assert.equal(again.credential, a.credential);
  assert.equal(again.node.endpoint, "192.0.2.99:51820");
  assert.deepEqual(again.node.subnets, a.node.subnets);
});

Deno.test("a join token cannot take over a registered node, even with its public key (403)", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const a = await register(fx, "node-a", JOIN, key);
  const before = stateOf(fx);
  // Every node sees node-a's public key in /v1/peers; the join token alone must not be enough.
  for (const attempt of [key, randomKey()]) {
    const res = await fx.raw("POST", "/v1/nodes", {
      token: JOIN,
      json: { name: "node-a", publicKey: attempt, endpoint: "192.0.2.66:51820" },
    });
    assert.equal(res.status, 403);
    const body = await res.json() as { error: string };
    assert.match(body.error, /a join token admits only new names/);
    assert.match(body.error, /wgcni cluster node reset node-a/);
  }
  assert.equal(stateOf(fx), before);
  // The real node's credential still works, and nothing about it changed.
  const me = await fx.client(a.credential).getNode("node-a");
  assert.equal(me.publicKey, key);
  assert.equal(me.endpoint, "192.0.2.10:51820");
});

Deno.test("after an admin reset a join token registers the name once; the old credential is gone", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const a = await register(fx, "node-a", JOIN, key);
  await assert.rejects(fx.client(JOIN).resetNode("node-a"), AuthError);
  await assert.rejects(fx.client(a.credential).resetNode("node-a"), AuthError);
  await assert.rejects(fx.client(ADMIN).resetNode("node-zz"), NotFoundError);
  const rev = fx.store.revision();
  const reset = await fx.client(ADMIN).resetNode("node-a");
  assert.deepEqual(reset.subnets, a.node.subnets);
  assert.equal(fx.store.revision(), rev, "a reset changes nothing peers see");
  await assert.rejects(fx.client(a.credential).getNode("node-a"), AuthError);
  // The node registers again with the join token (here with a new key: its disk was lost).
  const newKey = randomKey();
  const b = await register(fx, "node-a", JOIN, newKey);
  assert.deepEqual(b.node.subnets, a.node.subnets, "its subnets stay");
  assert.equal(b.node.publicKey, newKey);
  assert.notEqual(b.credential, a.credential);
  await fx.client(b.credential).getNode("node-a");
  // Once: the name is closed to join tokens again.
  await assert.rejects(register(fx, "node-a", JOIN, newKey), AuthError);
});

Deno.test("a node ahead of the store's revision is refused (409 StaleStoreError) and nothing changes", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  const a = await register(fx, "node-a", JOIN, key);
  const rev = fx.store.revision();
  const ahead = { name: "node-b", publicKey: randomKey(), endpoint: "192.0.2.11:51820" };
  // A node that applied revisions this store no longer has (it was rolled back).
  const before = stateOf(fx);
  const res = await fx.raw("POST", "/v1/nodes", {
    token: JOIN,
    json: { ...ahead, revision: rev + 5 },
  });
  assert.equal(res.status, 409);
  const body = await res.json();
  assert.equal(body.code, "StaleStoreError");
  assert.match(body.error, new RegExp(`store is at revision ${rev}, behind revision ${rev + 5}`));
  await assert.rejects(
    fx.client(a.credential).register({
      name: "node-a",
      publicKey: key,
      endpoint: "192.0.2.10:51820",
      revision: rev + 1,
    }),
    (err: Error) => err instanceof StaleStoreError && err instanceof ConflictError,
  );
  assert.equal(stateOf(fx), before, "nothing written");
  // At or behind the store's revision registers as usual.
  const b = await fx.client(JOIN).register({ ...ahead, revision: rev });
  assert.equal(b.node.name, "node-b");
  for (const revision of [-1, 1.5, "7"]) {
    const bad = await fx.raw("POST", "/v1/nodes", {
      token: JOIN,
      json: { ...ahead, name: "node-c", revision },
    });
    assert.equal(bad.status, 400, `revision ${JSON.stringify(revision)}`);
  }
});

Deno.test("the same name with another key is refused (403) with only a join token", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const before = stateOf(fx);
  await assert.rejects(
    register(fx, "node-a"),
    (err: Error) => err instanceof AuthError && /admits only new names/.test(err.message),
  );
  assert.equal(stateOf(fx), before);
  assert.equal(fx.store.getNode("node-a")?.publicKey, a.node.publicKey);
});

Deno.test("the same name with another key is accepted with the node credential or admin", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const k2 = randomKey();
  const viaNode = await register(fx, "node-a", a.credential, k2);
  assert.equal(viaNode.node.publicKey, k2);
  assert.deepEqual(viaNode.node.subnets, a.node.subnets);
  const k3 = randomKey();
  const viaAdmin = await register(fx, "node-a", ADMIN, k3);
  assert.equal(viaAdmin.node.publicKey, k3);
  assert.deepEqual(viaAdmin.node.subnets, a.node.subnets);
});

Deno.test("a key change is one upsert of the new key, which replaces the old by name", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const rev = fx.store.revision();
  const k2 = randomKey();
  await register(fx, "node-a", a.credential, k2);
  const events = fx.store.eventsSince(rev)!;
  assert.deepEqual(events.map((e) => e.type === "upsert" ? [e.type, e.peer.publicKey] : [e.type]), [
    ["upsert", k2],
  ]);
  assert.ok(events[0]!.revision > rev);
  assert.equal(fx.store.revision(), events[0]!.revision);
});

Deno.test("a node credential cannot register or touch another node (403)", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const b = await register(fx, "node-b");
  const before = stateOf(fx);
  const asA = fx.client(a.credential);
  const forbidden = (err: Error) => err instanceof AuthError && !err.missing;
  await assert.rejects(register(fx, "node-b", a.credential), forbidden);
  await assert.rejects(register(fx, "node-c", a.credential), forbidden);
  await assert.rejects(asA.leave("node-b"), forbidden);
  await assert.rejects(asA.heartbeat("node-b"), forbidden);
  await assert.rejects(asA.getNode("node-b"), forbidden);
  assert.equal(stateOf(fx), before);
  assert.ok(fx.store.getNode("node-b"));
  void b;
});

Deno.test("a public key already held by another node or client is refused (409)", async () => {
  await using fx = await clusterFixture();
  const key = randomKey();
  await register(fx, "node-a", JOIN, key);
  await assert.rejects(register(fx, "node-b", JOIN, key), ConflictError);
  await assert.rejects(
    fx.client(ADMIN).addClient({ name: "laptop", publicKey: key }),
    ConflictError,
  );
  const ck = randomKey();
  await fx.client(ADMIN).addClient({ name: "laptop", publicKey: ck });
  await assert.rejects(register(fx, "node-c", JOIN, ck), /registered to client laptop/);
});

/**
 * Curve25519 points of small order, each as a key (0, 1, the two of order 8,
 * p - 1, p, p + 1) and, for 0, the encoding with the top bit set.
 */
const LOW_ORDER_KEYS = [
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
  "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
  "4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA=",
  "X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=",
  "7P///////////////////////////////////////38=",
  "7f///////////////////////////////////////38=",
  "7v///////////////////////////////////////38=",
  "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAIA=",
];

const BAD_REGISTRATIONS: readonly [string, unknown, RegExp][] = [
  ["empty name", { name: "" }, /name: must not be empty/],
  ["uppercase name", { name: "Node-A" }, /name: must be lowercase/],
  ["leading hyphen", { name: "-a" }, /name: "-a" is not a DNS label/],
  ["trailing hyphen", { name: "a-" }, /is not a DNS label/],
  ["underscore", { name: "a_b" }, /is not a DNS label/],
  ["empty label", { name: "a..b" }, /"" is not a DNS label/],
  ["label of 64", { name: "a".repeat(64) }, /is not a DNS label/],
  ["name of 254", { name: ("a".repeat(62) + ".").repeat(4) + "ab" }, /at most 253/],
  ["name not a string", { name: 7 }, /name: must be a string/],
  ["short key", { publicKey: "abc" }, /publicKey: must be a WireGuard public key/],
  ["key of 33 bytes", { publicKey: btoa("x".repeat(33)) }, /publicKey/],
  ["key not base64", { publicKey: "!".repeat(43) + "=" }, /publicKey/],
  ["no port", { endpoint: "192.0.2.1" }, /endpoint: "192.0.2.1" is not IP:PORT/],
  ["a link MTU too small", { mtu: 500 }, /mtu: must be at least 576/],
  ["a link MTU not whole", { mtu: 1400.5 }, /mtu: must be a whole number/],
  ["port 0", { endpoint: "192.0.2.1:0" }, /port 0 is not within/],
  ["port 70000", { endpoint: "192.0.2.1:70000" }, /port 70000/],
  ["host name", { endpoint: "node-a.example:51820" }, /host names are not accepted/],
  ["bare IPv6", { endpoint: "2001:db8::1:51820" }, /is not IP:PORT/],
  ["IPv4 in brackets", { endpoint: "[192.0.2.1]:51820" }, /is not an IPv6 address/],
  ["bad IPv4", { endpoint: "192.0.2.300:51820" }, /is not an IPv4 address/],
  ["unspecified", { endpoint: "0.0.0.0:51820" }, /unspecified/],
  ["unspecified v6", { endpoint: "[::]:51820" }, /unspecified address/],
  ["multicast", { endpoint: "224.0.0.1:51820" }, /multicast/],
  ["multicast v6", { endpoint: "[ff02::1]:51820" }, /multicast/],
  ["broadcast", { endpoint: "255.255.255.255:51820" }, /broadcast/],
  ["loopback", { endpoint: "127.0.0.1:51820" }, /127\.0\.0\.1 is in the loopback range/],
  ["loopback v6", { endpoint: "[::1]:51820" }, /loopback address/],
  ["mapped loopback", { endpoint: "[::ffff:127.0.0.1]:51820" }, /loopback range/],
  ["link-local", { endpoint: "169.254.0.1:51820" }, /link-local/],
  ["link-local v6", { endpoint: "[fe80::1]:51820" }, /link-local/],
  ...LOW_ORDER_KEYS.map((key, i): [string, unknown, RegExp] => [
    `low-order key ${i}`,
    { publicKey: key },
    /publicKey: is a low-order Curve25519 point/,
  ]),
  ["zone id", { endpoint: "[fe80::1%eth0]:51820" }, /zone ids/],
  ["inside the pod pool", { endpoint: "10.244.7.1:51820" }, /inside the cluster pool/],
  ["inside a client pool", { endpoint: "[fd00:64::5]:51820" }, /inside the cluster pool/],
  ["missing fields", { name: undefined, endpoint: undefined }, /name: must be a string/],
];

Deno.test("register refuses bad input with 400, a specific message and no write", async (t) => {
  await using fx = await clusterFixture();
  const single = await fx.client(ADMIN).createToken({ singleUse: true });
  await register(fx, "existing");
  for (const [what, patch, message] of BAD_REGISTRATIONS) {
    await t.step(what, async () => {
      const body = {
        name: "node-x",
        publicKey: randomKey(),
        endpoint: "192.0.2.1:51820",
        ...(patch as object),
      };
      const before = stateOf(fx);
      for (const token of [JOIN, single.token, ADMIN]) {
        const res = await fx.raw("POST", "/v1/nodes", { token, json: body });
        const answer = await res.json();
        assert.equal(res.status, 400, JSON.stringify(answer));
        assert.match(answer.error, /^Cannot register node/);
        assert.match(answer.error, message);
      }
      assert.equal(stateOf(fx), before);
    });
  }
  await t.step("body that is not JSON", async () => {
    const res = await fx.raw("POST", "/v1/nodes", { token: JOIN, body: "{nope" });
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /JSON/);
  });
  await t.step("body that is an array", async () => {
    const res = await fx.raw("POST", "/v1/nodes", { token: JOIN, json: [1] });
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /must be a JSON object/);
  });
  await t.step("body over the size limit", async () => {
    const res = await fx.raw("POST", "/v1/nodes", {
      token: JOIN,
      json: { name: "x".repeat(100_000) },
    });
    assert.equal(res.status, 413);
    assert.match((await res.json()).error, /over 65536 bytes/);
  });
  // The single-use token was never consumed by the refused requests.
  await register(fx, "node-y", single.token);
});

Deno.test("every route but health needs a credential (401 without one)", async () => {
  await using fx = await clusterFixture();
  const routes: [string, string, unknown?][] = [
    ["POST", "/v1/nodes", { name: "a", publicKey: randomKey(), endpoint: "192.0.2.1:1" }],
    ["GET", "/v1/nodes"],
    ["GET", "/v1/nodes/a"],
    ["DELETE", "/v1/nodes/a"],
    ["POST", "/v1/nodes/a/heartbeat"],
    ["POST", "/v1/nodes/a/endpoint", { endpoint: "192.0.2.1:1" }],
    ["POST", "/v1/nodes/a/key", { publicKey: randomKey(), switchAt: fx.now + 5000 }],
    ["POST", "/v1/relay", { peer: "a" }],
    ["GET", "/v1/peers"],
    ["GET", "/v1/watch"],
    ["POST", "/v1/clients", { name: "c", publicKey: randomKey() }],
    ["GET", "/v1/clients"],
    ["DELETE", "/v1/clients/c"],
    ["POST", "/v1/tokens", {}],
    ["GET", "/v1/tokens"],
    ["DELETE", "/v1/tokens/join"],
  ];
  const before = stateOf(fx);
  for (const [method, path, json] of routes) {
    for (const token of [undefined, "not-a-known-token-at-all"]) {
      const res = await fx.raw(method, path, {
        ...(token !== undefined ? { token } : {}),
        ...(json !== undefined ? { json } : {}),
      });
      const body = await res.json();
      assert.equal(res.status, 401, `${method} ${path} ${token}: ${JSON.stringify(body)}`);
      assert.match(body.error, /^Cannot authenticate/);
      assert.equal(body.code, "AuthError");
    }
  }
  const basic = await fx.app.request("http://x/v1/nodes", {
    headers: { authorization: "Basic Zm9vOmJhcg==" },
  });
  assert.equal(basic.status, 401);
  assert.match((await basic.json()).error, /not Bearer/);
  assert.equal(stateOf(fx), before);
});

Deno.test("a join token opens registration only (403 elsewhere)", async () => {
  await using fx = await clusterFixture();
  const join = fx.client(JOIN);
  const forbidden = (err: Error) => err instanceof AuthError && !err.missing;
  await assert.rejects(join.nodes(), forbidden);
  await assert.rejects(join.peers(), forbidden);
  await assert.rejects(join.clients(), forbidden);
  await assert.rejects(join.tokens(), forbidden);
  await assert.rejects(join.createToken(), forbidden);
  await assert.rejects(join.addClient({ name: "c", publicKey: randomKey() }), forbidden);
  await assert.rejects(join.leave("x"), forbidden);
});

Deno.test("a node credential cannot use admin routes (403)", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const node = fx.client(a.credential);
  const forbidden = (err: Error) => err instanceof AuthError && !err.missing;
  await assert.rejects(node.nodes(), forbidden);
  await assert.rejects(node.clients(), forbidden);
  await assert.rejects(node.addClient({ name: "c", publicKey: randomKey() }), forbidden);
  await assert.rejects(node.removeClient("c"), forbidden);
  await assert.rejects(node.tokens(), forbidden);
  await assert.rejects(node.createToken(), forbidden);
  await assert.rejects(node.revokeToken("join"), forbidden);
});

Deno.test("an expired join token is refused (401)", async () => {
  await using fx = await clusterFixture();
  const t = await fx.client(ADMIN).createToken({ ttlSeconds: 60 });
  assert.equal(t.expiresAt, fx.now + 60_000);
  await register(fx, "early", t.token);
  fx.now += 60_000;
  const before = stateOf(fx);
  await assert.rejects(
    register(fx, "late", t.token),
    (err: Error) => err instanceof AuthError && err.missing && /expired/.test(err.message),
  );
  assert.equal(stateOf(fx), before);
});

Deno.test("a single-use join token registers one node only", async () => {
  await using fx = await clusterFixture();
  const t = await fx.client(ADMIN).createToken({ singleUse: true });
  assert.equal(t.singleUse, true);
  assert.equal(t.used, false);
  await register(fx, "first", t.token);
  await assert.rejects(
    register(fx, "second", t.token),
    (err: Error) => err instanceof AuthError && /already used/.test(err.message),
  );
  const listed = (await fx.client(ADMIN).tokens()).find((x) => x.id === t.id);
  assert.equal(listed?.used, true);
});

Deno.test("a single-use token is not used up by a registration that fails", async () => {
  await using fx = await clusterFixture();
  const t = await fx.client(ADMIN).createToken({ singleUse: true });
  await register(fx, "taken");
  await assert.rejects(register(fx, "taken", t.token), AuthError);
  await register(fx, "other", t.token);
});

Deno.test("tokens: create, list without secrets, revoke", async () => {
  await using fx = await clusterFixture();
  const admin = fx.client(ADMIN);
  const t = await admin.createToken({ ttlSeconds: 3600, singleUse: false });
  assert.equal(typeof t.token, "string");
  assert.equal(t.expiresAt, fx.now + 3_600_000);
  const list = await admin.tokens();
  assert.deepEqual(list.map((x) => x.id).sort(), ["join", t.id].sort());
  assert.ok(!JSON.stringify(list).includes(t.token));
  assert.ok(!JSON.stringify(list).includes(JOIN));
  assert.ok(!list.some((x) => x.id === "admin"), "the admin token is not a join token");
  await admin.revokeToken(t.id);
  await assert.rejects(register(fx, "n", t.token), AuthError);
  await assert.rejects(admin.revokeToken(t.id), NotFoundError);
  await assert.rejects(admin.revokeToken("admin"), NotFoundError);
  // The bootstrap join token can be revoked like any other.
  await admin.revokeToken("join");
  await assert.rejects(register(fx, "n", JOIN), AuthError);
});

Deno.test("token creation refuses bad lifetimes (400)", async () => {
  await using fx = await clusterFixture();
  for (
    const [body, message] of [
      [{ ttlSeconds: 0 }, /ttlSeconds: must be at least 1 second/],
      [{ ttlSeconds: -5 }, /at least 1 second/],
      [{ ttlSeconds: 1.5 }, /whole seconds/],
      [{ ttlSeconds: "1h" }, /must be a number of seconds/],
      [{ ttlSeconds: 1e12 }, /at most ten years/],
      [{ singleUse: "yes" }, /singleUse: must be true or false/],
    ] as const
  ) {
    const res = await fx.raw("POST", "/v1/tokens", { token: ADMIN, json: body });
    const answer = await res.json();
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.match(answer.error, /^Cannot create token: /);
    assert.match(answer.error, message);
  }
  assert.equal(fx.store.listTokens().length, 1);
  const bad = await fx.raw("DELETE", "/v1/tokens/NOT_AN_ID", { token: ADMIN });
  assert.equal(bad.status, 400);
  await bad.body?.cancel();
});

Deno.test("nodes: list (admin), heartbeat renews the lease, leave removes", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  await register(fx, "node-b");
  const admin = fx.client(ADMIN);
  assert.deepEqual((await admin.nodes()).map((n) => n.name), ["node-a", "node-b"]);
  fx.now += 5000;
  const hb = await fx.client(a.credential).heartbeat("node-a");
  assert.equal(hb.lastSeenAt, fx.now);
  await admin.heartbeat("node-b");
  await assert.rejects(admin.heartbeat("node-zz"), NotFoundError);
  await fx.client(a.credential).leave("node-a");
  assert.deepEqual((await admin.nodes()).map((n) => n.name), ["node-b"]);
  // Its credential died with it.
  await assert.rejects(fx.client(a.credential).peers(), AuthError);
  await admin.removeNode("node-b");
  assert.deepEqual(await admin.nodes(), []);
  await assert.rejects(admin.removeNode("node-b"), NotFoundError);
  const bad = await fx.raw("DELETE", "/v1/nodes/Bad_Name", { token: ADMIN });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /^Cannot remove node: name:/);
});

Deno.test("a heartbeat may carry the node's report: pods and readiness, checked like any body", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const node = await fx.client(a.credential).heartbeat("node-a", { pods: 7, ready: false });
  assert.equal(node.pods, 7);
  assert.equal(node.ready, false);
  const listed = (await fx.client(ADMIN).nodes()).find((n) => n.name === "node-a");
  assert.deepEqual([listed?.pods, listed?.ready], [7, false]);
  // Without a body the lease is renewed and the last report stays.
  fx.now += 1000;
  const plain = await fx.client(a.credential).heartbeat("node-a");
  assert.deepEqual([plain.lastSeenAt, plain.pods], [fx.now, 7]);
  for (
    const body of [
      '{"pods": -1, "ready": true}',
      '{"pods": 1}',
      '{"pods": 1, "ready": true, "x": 1}',
      "{",
    ]
  ) {
    const res = await fx.raw("POST", "/v1/nodes/node-a/heartbeat", { token: a.credential, body });
    assert.equal(res.status, 400, body);
    assert.match((await res.json()).error, /^Cannot renew the lease: /);
  }
});

Deno.test("a join token is marked used once a node registered with it", async () => {
  await using fx = await clusterFixture();
  const t = await fx.client(ADMIN).createToken({});
  assert.equal((await fx.client(ADMIN).tokens()).find((x) => x.id === t.id)?.used, false);
  await register(fx, "node-a", t.token);
  await register(fx, "node-b", t.token);
  assert.equal((await fx.client(ADMIN).tokens()).find((x) => x.id === t.id)?.used, true);
});

Deno.test("a removed node's subnets wait out the grace period before reuse", async () => {
  await using fx = await clusterFixture({
    pools: {
      podCidrs: ["10.9.0.0/23", "fd00:9::/63"],
      clientCidrs: [],
      nodeMaskV4: 24,
      nodeMaskV6: 64,
    },
    graceMs: 60_000,
  });
  const a = await register(fx, "a");
  await register(fx, "b");
  await fx.client(ADMIN).removeNode("a");
  // Both subnets of each family are now taken or quarantined.
  await assert.rejects(
    register(fx, "c"),
    (err: Error) =>
      err instanceof PoolExhaustedError && /exhausted/.test(err.message) &&
      /grace period/.test(err.message),
  );
  fx.now += 60_000;
  const c = await register(fx, "c");
  assert.deepEqual(c.node.subnets, a.node.subnets);
});

Deno.test("a node that comes back within the grace period gets its subnets again", async () => {
  await using fx = await clusterFixture({ graceMs: 60_000 });
  const key = randomKey();
  const a = await register(fx, "a", JOIN, key);
  await fx.client(ADMIN).removeNode("a");
  await register(fx, "b");
  fx.now += 30_000;
  const back = await register(fx, "a", JOIN, key);
  assert.deepEqual(back.node.subnets, a.node.subnets);
});

Deno.test("an exhausted pool answers 503 with a clear message", async () => {
  await using fx = await clusterFixture({
    pools: { podCidrs: ["10.9.0.0/23"], clientCidrs: [], nodeMaskV4: 24, nodeMaskV6: 64 },
  });
  await register(fx, "a");
  await register(fx, "b");
  const before = stateOf(fx);
  const res = await fx.raw("POST", "/v1/nodes", {
    token: JOIN,
    json: { name: "c", publicKey: randomKey(), endpoint: "192.0.2.1:51820" },
  });
  const body = await res.json();
  assert.equal(res.status, 503);
  assert.equal(body.code, "PoolExhaustedError");
  assert.match(
    body.error,
    /Cannot allocate a node subnet from 10\.9\.0\.0\/23: the pool is exhausted/,
  );
  assert.equal(stateOf(fx), before);
});

Deno.test("lease expiry removes nodes not heard from; heartbeats keep them", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  await register(fx, "b");
  fx.now += 50_000;
  await fx.client(a.credential).heartbeat("a");
  fx.now += 50_000;
  const gone = await fx.store.expire(fx.now, 60_000);
  assert.deepEqual(gone, ["b"]);
  assert.deepEqual(fx.store.listNodes().map((n) => n.name), ["a"]);
});

Deno.test("peers: a snapshot of nodes and clients with a revision", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  const b = await register(fx, "b");
  const ck = randomKey();
  const c = await fx.client(ADMIN).addClient({ name: "laptop", publicKey: ck });
  const snap = await fx.client(a.credential).peers();
  assert.equal(snap.revision, fx.store.revision());
  assert.ok(snap.revision > 0);
  assert.deepEqual(snap.peers, [
    {
      kind: "node",
      name: "a",
      publicKey: a.node.publicKey,
      endpoint: a.node.endpoint,
      allowedIps: a.node.subnets,
    },
    {
      kind: "node",
      name: "b",
      publicKey: b.node.publicKey,
      endpoint: b.node.endpoint,
      allowedIps: b.node.subnets,
    },
    { kind: "client", name: "laptop", publicKey: ck, allowedIps: c.client.addresses },
  ]);
  assert.deepEqual(await fx.client(ADMIN).peers(), snap);
});

/** Collects watch events until `count` arrived. */
async function take(
  it: AsyncGenerator<WatchEvent, void, undefined>,
  count: number,
): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  while (out.length < count) {
    const { value, done } = await it.next();
    if (done) break;
    out.push(value);
  }
  return out;
}

Deno.test("watch: a snapshot, then one delta per change", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  const stop = new AbortController();
  const it = fx.client(a.credential).watch(undefined, stop.signal);
  const [snap] = await take(it, 1);
  assert.equal(snap?.type, "snapshot");
  assert.equal(snap?.revision, fx.store.revision());
  const revs: number[] = [];
  const b = await register(fx, "b");
  revs.push(fx.store.revision());
  const ck = randomKey();
  await fx.client(ADMIN).addClient({ name: "laptop", publicKey: ck });
  revs.push(fx.store.revision());
  await fx.client(ADMIN).removeNode("b");
  revs.push(fx.store.revision());
  await fx.client(ADMIN).removeClient("laptop");
  revs.push(fx.store.revision());
  assert.ok(snap!.revision < revs[0]! && revs.every((r, i) => i === 0 || r > revs[i - 1]!));
  const deltas = await take(it, 4);
  assert.deepEqual(deltas.map((e) => [e.type, e.revision]), [
    ["upsert", revs[0]],
    ["upsert", revs[1]],
    ["delete", revs[2]],
    ["delete", revs[3]],
  ]);
  assert.deepEqual(deltas[0], {
    type: "upsert",
    revision: revs[0],
    peer: {
      kind: "node",
      name: "b",
      publicKey: b.node.publicKey,
      endpoint: b.node.endpoint,
      allowedIps: b.node.subnets,
    },
  });
  assert.deepEqual(deltas[3], {
    type: "delete",
    revision: revs[3],
    kind: "client",
    name: "laptop",
    publicKey: ck,
  });
  stop.abort();
  assert.deepEqual(await it.next(), { value: undefined, done: true });
});

Deno.test("watch since a revision replays what was missed, then goes live", async () => {
  await using fx = await clusterFixture();
  const revs: number[] = [];
  for (const n of ["a", "b", "c"]) {
    await register(fx, n);
    revs.push(fx.store.revision());
  }
  const stop = new AbortController();
  const it = fx.client(ADMIN).watch(revs[0], stop.signal);
  const missed = await take(it, 2);
  assert.deepEqual(missed.map((e) => [e.type, e.revision]), [
    ["upsert", revs[1]],
    ["upsert", revs[2]],
  ]);
  await register(fx, "d");
  const [live] = await take(it, 1);
  assert.equal(live?.revision, fx.store.revision());
  assert.ok(live!.revision > revs[2]!);
  stop.abort();
});

Deno.test("watch sends a snapshot when the history since that revision is gone", async () => {
  await using fx = await clusterFixture({ historyLimit: 3 });
  const revs: number[] = [];
  for (const n of ["a", "b", "c", "d", "e", "f"]) {
    await register(fx, n);
    revs.push(fx.store.revision());
  }
  const stop = new AbortController();
  for (const since of [0, revs[0]!, revs[1]!, revs[5]! + 1000]) {
    const it = fx.client(ADMIN).watch(since, stop.signal);
    const [first] = await take(it, 1);
    assert.equal(first?.type, "snapshot", `since ${since}`);
    assert.equal(first?.revision, revs[5]);
    if (first?.type === "snapshot") assert.equal(first.peers.length, 6);
    await it.return();
  }
  const it = fx.client(ADMIN).watch(revs[2], stop.signal);
  assert.deepEqual((await take(it, 3)).map((e) => e.revision), revs.slice(3));
  await it.return();
  stop.abort();
  const bad = await fx.raw("GET", "/v1/watch?since=abc", { token: ADMIN });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /since: must be a revision/);
});

Deno.test("watch sends keep-alives with the current revision", async () => {
  await using fx = await clusterFixture({ keepAliveMs: 20 });
  await register(fx, "a");
  const rev = fx.store.revision();
  const stop = new AbortController();
  const pings: number[] = [];
  let opened = 0;
  const it = fx.client(ADMIN).watch(rev, stop.signal, {
    onPing: (r) => pings.push(r),
    onOpen: () => opened++,
  });
  const next = it.next();
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(opened, 1, "the stream counts as open with nothing to replay");
  assert.ok(pings.length >= 2, `pings: ${pings}`);
  assert.ok(pings.every((r) => r === rev));
  stop.abort();
  await next;
});

Deno.test("clients: add from the client pool, list, remove", async () => {
  await using fx = await clusterFixture();
  const n = await register(fx, "node-a");
  const admin = fx.client(ADMIN);
  const key = randomKey();
  const r = await admin.addClient({ name: "laptop", publicKey: key });
  assert.equal(r.client.name, "laptop");
  assert.equal(r.client.publicKey, key);
  assert.deepEqual(r.client.addresses, ["100.64.0.1/32", "fd00:64::1/128"]);
  assert.deepEqual(r.nodes, [{
    kind: "node",
    name: "node-a",
    publicKey: n.node.publicKey,
    endpoint: n.node.endpoint,
    allowedIps: n.node.subnets,
  }]);
  assert.deepEqual(r.cluster.clientCidrs, ["100.64.0.0/24", "fd00:64::/120"]);
  const r2 = await admin.addClient({ name: "phone", publicKey: randomKey() });
  assert.deepEqual(r2.client.addresses, ["100.64.0.2/32", "fd00:64::2/128"]);
  await assert.rejects(admin.addClient({ name: "laptop", publicKey: randomKey() }), ConflictError);
  assert.deepEqual((await admin.clients()).map((c) => c.name), ["laptop", "phone"]);
  await admin.removeClient("laptop");
  assert.deepEqual((await admin.clients()).map((c) => c.name), ["phone"]);
  await assert.rejects(admin.removeClient("laptop"), NotFoundError);
});

Deno.test("client registration refuses bad input with 400 and no write", async () => {
  await using fx = await clusterFixture();
  const before = stateOf(fx);
  for (
    const [body, message] of [
      [{ name: "Laptop", publicKey: randomKey() }, /name: must be lowercase/],
      [{ name: "laptop", publicKey: "short" }, /publicKey: must be a WireGuard public key/],
      ...LOW_ORDER_KEYS.map((publicKey) =>
        [{ name: "laptop", publicKey }, /publicKey: is a low-order Curve25519 point/] as const
      ),
      [{ publicKey: randomKey() }, /name: must be a string/],
      ["text", /must be a JSON object/],
    ] as const
  ) {
    const res = await fx.raw("POST", "/v1/clients", { token: ADMIN, json: body });
    const answer = await res.json();
    assert.equal(res.status, 400);
    assert.match(answer.error, /^Cannot add client: /);
    assert.match(answer.error, message);
  }
  assert.equal(stateOf(fx), before);
});

Deno.test("without a client pool, adding a client is refused (409)", async () => {
  await using fx = await clusterFixture({
    pools: { podCidrs: ["10.244.0.0/16"], clientCidrs: [], nodeMaskV4: 24, nodeMaskV6: 64 },
  });
  await assert.rejects(
    fx.client(ADMIN).addClient({ name: "laptop", publicKey: randomKey() }),
    (err: Error) => err instanceof ConflictError && /--client-cidr/.test(err.message),
  );
});

Deno.test("health, readiness and metrics need no credential", async () => {
  await using fx = await clusterFixture();
  await register(fx, "a");
  await fx.client(ADMIN).addClient({ name: "c", publicKey: randomKey() });
  const health = await fx.raw("GET", "/healthz");
  assert.equal(health.status, 200);
  assert.equal(await health.text(), "ok\n");
  assert.equal(await fx.client("whatever").ready(), true);
  const text = await fx.client("whatever").metrics();
  for (
    const line of [
      /^wgcni_cluster_nodes 1$/m,
      /^wgcni_cluster_clients 1$/m,
      /^wgcni_cluster_pool_used\{pool="pod",family="ipv4",cidr="10.244.0.0\/16"\} 1$/m,
      /^wgcni_cluster_pool_size\{pool="pod",family="ipv4",cidr="10.244.0.0\/16"\} 256$/m,
      /^wgcni_cluster_pool_size\{pool="pod",family="ipv6",cidr="fd00:10:244::\/56"\} 256$/m,
      /^wgcni_cluster_pool_used\{pool="client",family="ipv6",cidr="fd00:64::\/120"\} 1$/m,
      /^wgcni_cluster_watchers 0$/m,
      /^wgcni_cluster_requests_total\{method="POST",route="\/v1\/nodes",status="201"\} 1$/m,
      /^wgcni_cluster_request_duration_seconds_count\{method="POST",route="\/v1\/nodes"\} 1$/m,
    ]
  ) {
    assert.match(text, line);
  }
  const missing = await fx.raw("GET", "/v2/nothing");
  assert.equal(missing.status, 404);
  assert.match((await missing.json()).error, /No route GET \/v2\/nothing/);
});

Deno.test("the watcher gauge counts open streams", async () => {
  await using fx = await clusterFixture();
  const stop = new AbortController();
  const it = fx.client(ADMIN).watch(undefined, stop.signal);
  await take(it, 1);
  assert.match(await fx.client(ADMIN).metrics(), /^wgcni_cluster_watchers 1$/m);
  stop.abort();
  await it.next();
  await new Promise((r) => setTimeout(r, 10));
  assert.match(await fx.client(ADMIN).metrics(), /^wgcni_cluster_watchers 0$/m);
});

Deno.test("no response or listing ever carries a token or credential hash", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  const admin = fx.client(ADMIN);
  const everything = JSON.stringify([
    await admin.nodes(),
    await admin.peers(),
    await admin.tokens(),
    await admin.clients(),
    await fx.client(a.credential).getNode("a"),
  ]);
  for (const secret of [ADMIN, JOIN, a.credential]) assert.ok(!everything.includes(secret));
});

Deno.test("a node's own watch stream ends when the node is removed", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  const stop = new AbortController();
  const it = fx.client(a.credential).watch(undefined, stop.signal);
  await take(it, 1);
  await register(fx, "b");
  await fx.client(ADMIN).removeNode("a");
  const rest = await take(it, 10);
  assert.deepEqual(rest.map((e) => e.type), ["upsert", "delete"]);
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  stop.abort();
});

Deno.test("one credential holds at most four watch streams: a fifth closes its oldest", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "a");
  const stop = new AbortController();
  const streams = [];
  for (let i = 0; i < 5; i++) {
    const it = fx.client(a.credential).watch(undefined, stop.signal);
    await take(it, 1);
    streams.push(it);
  }
  assert.deepEqual(await streams[0]!.next(), { value: undefined, done: true });
  await register(fx, "b");
  for (const it of streams.slice(1)) {
    assert.deepEqual((await take(it, 1)).map((e) => e.type), ["upsert"]);
  }
  // Another credential has its own share.
  const other = fx.client(ADMIN).watch(undefined, stop.signal);
  assert.equal((await take(other, 1))[0]?.type, "snapshot");
  const metrics = await (await fx.raw("GET", "/metrics")).text();
  assert.match(metrics, /^wgcni_cluster_watchers 5$/m);
  assert.match(metrics, /^wgcni_cluster_watch_replaced_total 1$/m);
  stop.abort();
});

Deno.test("a watch stream that stops reading is dropped once behind, and resumes by revision", async () => {
  await using fx = await clusterFixture({ maxQueueBytes: 4096 });
  const res = await fx.raw("GET", "/v1/watch", { token: ADMIN });
  assert.equal(res.status, 200);
  const since = fx.store.revision();
  // Never read: every change queues on it.
  for (let i = 0; i < 40; i++) await register(fx, `n${i}`);
  // (On etcd the changes reach the stream through etcd's own watch, a little later.)
  let metrics = "";
  for (let i = 0; i < 100; i++) {
    metrics = await (await fx.raw("GET", "/metrics")).text();
    if (/^wgcni_cluster_watch_dropped_total 1$/m.test(metrics)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.match(metrics, /^wgcni_cluster_watch_dropped_total 1$/m);
  assert.match(metrics, /^wgcni_cluster_watchers 0$/m);
  await assert.rejects(res.text());
  // The watcher comes back with the last revision it saw and gets the rest.
  const stop = new AbortController();
  const it = fx.client(ADMIN).watch(since, stop.signal);
  const replay = await take(it, 40);
  assert.deepEqual(
    replay.map((e) => e.type === "upsert" ? e.peer.name : e.type),
    Array.from({ length: 40 }, (_, i) => `n${i}`),
  );
  stop.abort();
});

Deno.test("a bad name or id in the path is refused with 400 on every route", async () => {
  await using fx = await clusterFixture();
  const before = stateOf(fx);
  for (
    const [method, path, prefix] of [
      ["GET", "/v1/nodes/Bad_Name", "Cannot read node"],
      ["DELETE", "/v1/nodes/Bad_Name", "Cannot remove node"],
      ["POST", "/v1/nodes/Bad_Name/heartbeat", "Cannot renew the lease"],
      ["DELETE", "/v1/clients/-x", "Cannot remove client"],
      ["DELETE", "/v1/tokens/x%20y", "Cannot revoke token"],
    ] as const
  ) {
    const res = await fx.raw(method, path, { token: ADMIN });
    const body = await res.json();
    assert.equal(res.status, 400, `${method} ${path}`);
    assert.ok(body.error.startsWith(`${prefix}: `), body.error);
  }
  assert.equal(stateOf(fx), before);
});

Deno.test("a body not sent as JSON is refused with 400", async () => {
  await using fx = await clusterFixture();
  for (const path of ["/v1/nodes", "/v1/clients", "/v1/tokens"]) {
    for (const type of [undefined, "text/plain"]) {
      const res = await fx.app.request(`http://x${path}`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${path === "/v1/nodes" ? JOIN : ADMIN}`,
          ...(type ? { "content-type": type } : {}),
        },
        body: "{}",
      });
      assert.equal(res.status, 400, `${path} ${type}`);
      assert.match((await res.json()).error, /Content-Type: application\/json/);
    }
  }
});

Deno.test("a node that found its endpoint itself and is seen from another address is behind NAT", async () => {
  await using fx = await clusterFixture();
  const join = (name: string, from: string, detect = true, endpoint = "10.1.0.5:51820") =>
    fx.client(JOIN, from).register({
      name,
      publicKey: randomKey(),
      endpoint,
      ...(detect ? { detectEndpoint: true } : {}),
    });
  // Seen from its NAT's address: that address with its own port, marked.
  const a = await join("node-a", "198.51.100.7");
  assert.deepEqual([a.node.endpoint, a.node.nat], ["198.51.100.7:51820", true]);
  // Seen from the address it found (IPv4-mapped as the socket may say): not NAT'd.
  const b = await join("node-b", "::ffff:10.1.0.6", true, "10.1.0.6:51820");
  assert.deepEqual([b.node.endpoint, b.node.nat], ["10.1.0.6:51820", undefined]);
  // An --endpoint is the operator's word, whatever the manager sees.
  const c = await join("node-c", "198.51.100.8", false);
  assert.deepEqual([c.node.endpoint, c.node.nat], ["10.1.0.5:51820", undefined]);
  // Another family or loopback says nothing of NAT.
  const d = await join("node-d", "2001:db8::9");
  assert.equal(d.node.nat, undefined);
  const e = await join("node-e", "127.0.0.1");
  assert.equal(e.node.nat, undefined);
  const peer = (await fx.client(ADMIN).peers()).peers.find((p) => p.name === "node-a");
  assert.deepEqual([peer?.endpoint, peer?.nat], ["198.51.100.7:51820", true]);
  const bad = await fx.raw("POST", "/v1/nodes", {
    token: JOIN,
    json: { name: "node-f", publicKey: randomKey(), endpoint: "10.1.0.5:1", detectEndpoint: 1 },
  });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /detectEndpoint: must be true or false/);
});

Deno.test("where other nodes see a NAT'd node becomes its endpoint; refusals change nothing", async () => {
  await using fx = await clusterFixture();
  const a = await fx.client(JOIN, "198.51.100.7").register({
    name: "node-a",
    publicKey: randomKey(),
    endpoint: "10.1.0.5:51820",
    detectEndpoint: true,
  });
  const b = await register(fx, "node-b");
  const events: WatchEvent[] = [];
  fx.store.listen((e) => events.push(e));
  const seen = await fx.client(b.credential).observeEndpoint("node-a", "198.51.100.7:40123");
  assert.deepEqual([seen.endpoint, seen.nat], ["198.51.100.7:40123", true]);
  assert.equal(events.length, 1);
  // Said again: no change, no event.
  await fx.client(b.credential).observeEndpoint("node-a", "198.51.100.7:40123");
  assert.equal(events.length, 1);
  // A re-registration from the same address keeps what was seen.
  const again = await fx.client(a.credential, "198.51.100.7").register({
    name: "node-a",
    publicKey: a.node.publicKey,
    endpoint: "10.1.0.5:51820",
    detectEndpoint: true,
  });
  assert.equal(again.node.endpoint, "198.51.100.7:40123");
  const before = stateOf(fx);
  // The node itself, a node not behind NAT, an unknown node, a pod address, bad input.
  await assert.rejects(
    fx.client(a.credential).observeEndpoint("node-a", "198.51.100.7:1"),
    AuthError,
  );
  await assert.rejects(
    fx.client(a.credential).observeEndpoint("node-b", "198.51.100.9:1"),
    ConflictError,
  );
  await assert.rejects(
    fx.client(b.credential).observeEndpoint("node-zz", "198.51.100.9:1"),
    NotFoundError,
  );
  await assert.rejects(fx.client(JOIN).observeEndpoint("node-a", "198.51.100.9:1"), AuthError);
  const inPool = await fx.raw("POST", "/v1/nodes/node-a/endpoint", {
    token: b.credential,
    json: { endpoint: "10.244.0.9:51820" },
  });
  assert.equal(inPool.status, 400);
  assert.match((await inPool.json()).error, /inside the cluster pool/);
  for (const body of ['{"endpoint": "nope"}', '{"endpoint": "1.2.3.4:5", "x": 1}', "{"]) {
    const res = await fx.raw("POST", "/v1/nodes/node-a/endpoint", { token: b.credential, body });
    assert.equal(res.status, 400, body);
    assert.match((await res.json()).error, body === "{" ? /JSON/ : /^Cannot record the endpoint: /);
  }
  assert.equal(stateOf(fx), before);
});

Deno.test("a node announces its next key; peers are told; refusals change nothing", async () => {
  await using fx = await clusterFixture();
  const a = await register(fx, "node-a");
  const b = await register(fx, "node-b");
  const events: WatchEvent[] = [];
  fx.store.listen((e) => events.push(e));
  const next = { publicKey: randomKey(), switchAt: fx.now + 10_000 };
  const node = await fx.client(a.credential).announceKey("node-a", next);
  assert.deepEqual(node.nextKey, next);
  assert.deepEqual(events.map((e) => e.type === "upsert" ? e.peer.nextKey : e.type), [next]);
  const before = stateOf(fx);
  const refused: [string, Promise<unknown>, new (...a: never[]) => Error][] = [
    ["another node", fx.client(b.credential).announceKey("node-a", next), AuthError],
    [
      "the admin",
      fx.client(ADMIN).announceKey("node-a", { ...next, publicKey: randomKey() }),
      AuthError,
    ],
    [
      "a held key",
      fx.client(a.credential).announceKey("node-a", { ...next, publicKey: b.node.publicKey }),
      ConflictError,
    ],
  ];
  for (const [what, call, type] of refused) await assert.rejects(call, type, what);
  for (
    const [json, message] of [
      [{ publicKey: randomKey(), switchAt: fx.now - 1 }, /must be ahead of now/],
      [
        { publicKey: "nope", switchAt: fx.now + 5000 },
        /publicKey: must be a WireGuard public key/,
      ],
      [{ publicKey: randomKey() }, /switchAt: must be milliseconds since the epoch/],
      [
        { publicKey: randomKey(), switchAt: fx.now + 5000, x: 1 },
        /Cannot announce the next key/,
      ],
    ] as const
  ) {
    const res = await fx.raw("POST", "/v1/nodes/node-a/key", { token: a.credential, json });
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.match((await res.json()).error, message);
  }
  assert.equal(stateOf(fx), before);
  // The registration with the next key finishes it: one upsert, the old key gone.
  await register(fx, "node-a", a.credential, next.publicKey);
  const last = events.at(-1);
  assert.ok(last?.type === "upsert" && last.peer.publicKey === next.publicKey);
  assert.equal(last.peer.nextKey, undefined);
});

Deno.test("relay: a node gets its side of a pair with another node; refusals say why", async () => {
  const asked: string[][] = [];
  const relay = {
    endpointFor: (node: string, host: string, other: string, otherHost: string) => {
      asked.push([node, host, other, otherHost]);
      return Promise.resolve(`203.0.113.1:${7600 + asked.length}`);
    },
  };
  await using fx = await clusterFixture({ relay });
  const a = await fx.client(JOIN, "198.51.100.7").register({
    name: "node-a",
    publicKey: randomKey(),
    endpoint: "10.1.0.5:51820",
    detectEndpoint: true,
  });
  await register(fx, "node-b");
  assert.equal(await fx.client(a.credential).relay("node-b"), "203.0.113.1:7601");
  // The side is known by the address the node is seen at.
  assert.deepEqual(asked, [["node-a", "198.51.100.7", "node-b", "192.0.2.10"]]);
  await assert.rejects(fx.client(a.credential).relay("node-zz"), NotFoundError);
  await assert.rejects(fx.client(ADMIN).relay("node-b"), AuthError);
  for (const [json, why] of [[{ peer: "node-a" }, /itself/], [{ peer: "Bad" }, /peer:/]] as const) {
    const res = await fx.raw("POST", "/v1/relay", { token: a.credential, json });
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, why);
  }
  assert.equal(asked.length, 1);
  await using plain = await clusterFixture();
  const c = await register(plain, "node-c");
  await assert.rejects(
    plain.client(c.credential).relay("node-c"),
    (err: Error) => err instanceof NotFoundError && /runs no relay/.test(err.message),
  );
});
