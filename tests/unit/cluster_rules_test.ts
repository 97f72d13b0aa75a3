/**
 * The cluster store's rules on their own: pure functions over an in-memory
 * view, no engine, no clock. Each case builds a view, runs a rule and looks
 * at the answer and the change set it returns (or the error it throws).
 */
import assert from "node:assert/strict";
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StoreCorruptError,
} from "../../lib/errors.ts";
import {
  hashSecret,
  MemoryClusterState,
  normalizePools,
  peerChanges,
  type Planned,
  type PoolConfig,
  PoolLayout,
  type Principal,
  resetCredentialHash,
  rules,
} from "../../lib/store/mod.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";

const T0 = 1_700_000_000_000;
const GRACE = 60_000;
const POOLS: PoolConfig = {
  podCidrs: ["10.9.0.0/22", "fd00:9::/62"],
  clientCidrs: ["100.64.0.0/30", "fd00:64::/126"],
  nodeMaskV4: 24,
  nodeMaskV6: 64,
};
const JOIN: Principal = { kind: "join", tokenId: "join" };
const ADMIN: Principal = { kind: "admin" };

/** A view with the bootstrap join token and nothing else. */
function view(pools: PoolConfig = POOLS): MemoryClusterState {
  const v = new MemoryClusterState(new PoolLayout(normalizePools(pools)));
  commit(v, rules.putToken(v, { id: "join", kind: "join", hash: hashSecret("j"), now: T0 }));
  return v;
}

/** Commits a rule's change set to the view, as an engine would, and returns the answer. */
function commit<T>(v: MemoryClusterState, planned: Planned<T>): T {
  v.apply(planned.changes);
  return planned.result;
}

function register(
  v: MemoryClusterState,
  name: string,
  options: { key?: string; principal?: Principal; endpoint?: string; now?: number } = {},
) {
  return rules.registerNode(
    v,
    { name, publicKey: options.key ?? `key-${name}`, endpoint: options.endpoint ?? "192.0.2.1:1" },
    {
      principal: options.principal ?? JOIN,
      credentialHash: `cred-${name}`,
      now: options.now ?? T0,
    },
  );
}

const policy = (now = T0) => ({ graceMs: GRACE, now });

Deno.test("a new node gets one subnet per pod pool, fresh ones in order, and is announced", () => {
  const v = view();
  const a = register(v, "a");
  assert.equal(a.result.created, true);
  assert.deepEqual(a.result.node.subnets, ["10.9.0.0/24", "fd00:9::/64"]);
  assert.deepEqual(a.changes.events, [{
    type: "upsert",
    peer: {
      kind: "node",
      name: "a",
      publicKey: "key-a",
      endpoint: "192.0.2.1:1",
      allowedIps: ["10.9.0.0/24", "fd00:9::/64"],
    },
  }]);
  assert.equal(v.node("a"), undefined, "a rule changes nothing by itself");
  commit(v, a);
  assert.deepEqual(commit(v, register(v, "b")).node.subnets, ["10.9.1.0/24", "fd00:9:0:1::/64"]);
});

Deno.test("registration refusals: each says why and changes nothing", async (t) => {
  const cases: {
    name: string;
    setup?: (v: MemoryClusterState) => void;
    run: (v: MemoryClusterState) => unknown;
    error: new (...a: never[]) => Error;
    message: RegExp;
  }[] = [
    {
      name: "an endpoint inside a pod pool",
      run: (v) => register(v, "a", { endpoint: "10.9.1.7:51820" }),
      error: RangeError,
      message: /endpoint 10\.9\.1\.7:51820 is inside the cluster pool 10\.9\.0\.0\/22/,
    },
    {
      name: "an endpoint inside a client pool, written as IPv4-mapped IPv6",
      run: (v) => register(v, "a", { endpoint: "[::ffff:100.64.0.1]:51820" }),
      error: RangeError,
      message: /inside the cluster pool 100\.64\.0\.0\/30/,
    },
    {
      name: "a key another node holds",
      setup: (v) => commit(v, register(v, "a", { key: "k" })),
      run: (v) => register(v, "b", { key: "k" }),
      error: ConflictError,
      message: /the public key is already registered to node a/,
    },
    {
      name: "a key a client holds",
      setup: (v) => commit(v, rules.addClient(v, { name: "laptop", publicKey: "k" }, T0)),
      run: (v) => register(v, "b", { key: "k" }),
      error: ConflictError,
      message: /already registered to client laptop/,
    },
    {
      name: "a new key for a node that another node holds",
      setup: (v) => {
        commit(v, register(v, "a", { key: "ka" }));
        commit(v, register(v, "b", { key: "kb" }));
      },
      run: (v) => register(v, "a", { key: "kb", principal: ADMIN }),
      error: ConflictError,
      message: /already registered to node b/,
    },
    {
      name: "a registered name with only a join token",
      setup: (v) => commit(v, register(v, "a")),
      run: (v) => register(v, "a"),
      error: AuthError,
      message: /a join token admits only new names.*wgcni cluster node reset a/,
    },
    {
      name: "another node's credential",
      setup: (v) => commit(v, register(v, "a")),
      run: (v) => register(v, "b", { principal: { kind: "node", name: "a" } }),
      error: AuthError,
      message: /the credential of node a may register only that node/,
    },
    {
      name: "a revoked join token",
      setup: (v) => commit(v, rules.revokeToken(v, "join")),
      run: (v) => register(v, "a"),
      error: AuthError,
      message: /join token join was revoked/,
    },
    {
      name: "the admin token's id as a join token",
      setup: (v) =>
        commit(v, rules.putToken(v, { id: "admin", kind: "admin", hash: "h", now: T0 })),
      run: (v) => register(v, "a", { principal: { kind: "join", tokenId: "admin" } }),
      error: AuthError,
      message: /was revoked/,
    },
    {
      name: "an expired join token",
      setup: (v) =>
        commit(v, rules.createToken(v, { id: "t", hash: "h", now: T0 - 10, ttlMs: 10 })),
      run: (v) => register(v, "a", { principal: { kind: "join", tokenId: "t" } }),
      error: AuthError,
      message: /join token t has expired/,
    },
    {
      name: "a used single-use join token",
      setup: (v) => {
        commit(v, rules.createToken(v, { id: "t", hash: "h", now: T0, singleUse: true }));
        commit(v, register(v, "a", { principal: { kind: "join", tokenId: "t" } }));
      },
      run: (v) => register(v, "b", { principal: { kind: "join", tokenId: "t" } }),
      error: AuthError,
      message: /single-use join token t was already used/,
    },
    {
      name: "a pod pool with no subnet left",
      setup: (v) => {
        for (const n of ["a", "b"]) commit(v, register(v, n));
        commit(v, rules.removeNode(v, "a", policy()));
      },
      run: (v) => register(v, "c", { now: T0 + 1000 }),
      error: PoolExhaustedError,
      message:
        /Cannot allocate a node subnet from 10\.9\.0\.0\/23: the pool is exhausted \(2 of 2 subnets taken; 1 of them wait out their grace period, the first until 2023-11-14T22:14:20\.000Z\)/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const v = view(
        c.name.startsWith("a pod pool") ? { ...POOLS, podCidrs: ["10.9.0.0/23"] } : POOLS,
      );
      c.setup?.(v);
      const before = JSON.stringify(rules.dumpOf(v));
      assert.throws(
        () => c.run(v),
        (err: Error) => err instanceof c.error && c.message.test(err.message),
      );
      assert.equal(JSON.stringify(rules.dumpOf(v)), before);
    });
  }
});

Deno.test("who may register a taken name again", async (t) => {
  const cases: [string, Principal, boolean][] = [
    ["the node's own credential", { kind: "node", name: "a" }, true],
    ["the admin token", ADMIN, true],
    ["a join token", JOIN, false],
    ["another node's credential", { kind: "node", name: "b" }, false],
  ];
  for (const [what, principal, allowed] of cases) {
    await t.step(what, () => {
      const v = view();
      commit(v, register(v, "a"));
      commit(v, register(v, "b"));
      const again = () => register(v, "a", { key: "new", principal });
      if (allowed) assert.equal(again().result.created, false);
      else assert.throws(again, AuthError);
    });
  }
  await t.step("a join token after an admin reset, once", () => {
    const v = view();
    commit(v, register(v, "a"));
    const reset = rules.resetNode(v, "a", resetCredentialHash());
    assert.deepEqual(reset.changes.events, [], "peers see nothing of a reset");
    commit(v, reset);
    const back = commit(v, register(v, "a", { key: "new" }));
    assert.equal(back.created, false);
    assert.deepEqual(back.node.subnets, ["10.9.0.0/24", "fd00:9::/64"], "its subnets stay");
    assert.equal(v.node("a")?.credentialHash, "cred-a");
    assert.throws(() => register(v, "a", { key: "newer" }), AuthError);
  });
});

Deno.test("registering again: what peers are told", async (t) => {
  const cases: [string, { key?: string; endpoint?: string }, string[]][] = [
    ["the same key and endpoint: nothing", {}, []],
    ["a new endpoint: one upsert", { endpoint: "192.0.2.2:1" }, ["upsert key-a"]],
    ["a new key: one upsert", { key: "k2" }, ["upsert k2"]],
  ];
  for (const [what, change, events] of cases) {
    await t.step(what, () => {
      const v = view();
      const first = commit(v, register(v, "a"));
      const again = register(v, "a", { ...change, principal: ADMIN, now: T0 + 5 });
      assert.deepEqual(
        again.changes.events.map((e) =>
          `${e.type} ${e.type === "upsert" ? e.peer.publicKey : e.publicKey}`
        ),
        events,
      );
      assert.deepEqual(again.result.node.subnets, first.node.subnets);
      assert.equal(again.result.node.registeredAt, T0);
      assert.equal(again.result.node.lastSeenAt, T0 + 5);
    });
  }
});

/** A node "a" (key key-a) with next key "next" announced, switching at T0 + 10 s. */
function rotating(): { v: MemoryClusterState; announced: Planned<unknown> } {
  const v = view();
  commit(v, register(v, "a"));
  const announced = rules.announceKey(v, "a", { publicKey: "next", switchAt: T0 + 10_000 }, {
    principal: { kind: "node", name: "a" },
    now: T0,
  });
  commit(v, announced);
  return { v, announced };
}

Deno.test("a next key: announced to peers, held by the node, and the registration with it finishes the switch", () => {
  const { v, announced } = rotating();
  const next = { publicKey: "next", switchAt: T0 + 10_000 };
  assert.deepEqual(
    announced.changes.events.map((e) =>
      e.type === "upsert" ? [e.peer.publicKey, e.peer.nextKey] : e
    ),
    [["key-a", next]],
  );
  assert.deepEqual(v.node("a")?.nextKey, next);
  assert.deepEqual(v.keyHolder("next"), { kind: "node", name: "a" });
  // The same announcement again: nothing.
  const again = rules.announceKey(v, "a", next, {
    principal: { kind: "node", name: "a" },
    now: T0 + 1,
  });
  assert.equal(again.changes.events.length, 0);
  // Another node may not take the next key.
  assert.throws(() => register(v, "b", { key: "next" }), ConflictError);
  // Re-registering with the current key keeps the rotation.
  commit(v, register(v, "a", { principal: { kind: "node", name: "a" }, now: T0 + 2 }));
  assert.deepEqual(v.node("a")?.nextKey, next);
  // With the next key: it is the key, the rotation is over, the old key is free.
  const done = register(v, "a", {
    key: "next",
    principal: { kind: "node", name: "a" },
    now: T0 + 10_001,
  });
  assert.deepEqual(
    done.changes.events.map((e) => e.type === "upsert" ? [e.peer.publicKey, e.peer.nextKey] : e),
    [["next", undefined]],
  );
  commit(v, done);
  assert.equal(v.node("a")?.publicKey, "next");
  assert.equal(v.node("a")?.nextKey, undefined);
  assert.equal(v.keyHolder("key-a"), undefined);
  assert.deepEqual(v.keyHolder("next"), { kind: "node", name: "a" });
});

Deno.test("a registration with a key other than the next one ends the rotation", () => {
  const { v } = rotating();
  commit(v, register(v, "a", { key: "third", principal: ADMIN, now: T0 + 1 }));
  assert.equal(v.node("a")?.nextKey, undefined);
  assert.equal(v.keyHolder("next"), undefined);
  assert.equal(v.node("a")?.publicKey, "third");
});

Deno.test("next-key refusals: each says why and changes nothing", async (t) => {
  /** Node `name` (as `by`, node "a" by default) announces `key` to switch `ahead` ms on. */
  const announce = (
    key: string,
    ahead: number,
    by: Principal = { kind: "node", name: "a" },
    name = "a",
  ) =>
  (v: MemoryClusterState) =>
    rules.announceKey(v, name, { publicKey: key, switchAt: T0 + ahead }, {
      principal: by,
      now: T0,
    });
  const cases: [
    string,
    (v: MemoryClusterState) => Planned<unknown>,
    new (...args: never[]) => Error,
    RegExp,
  ][] = [
    [
      "another node's credential",
      announce("n2", 5, { kind: "node", name: "b" }),
      AuthError,
      /only that node, which holds the private key/,
    ],
    ["the admin token", announce("n2", 5, ADMIN), AuthError, /only that node/],
    [
      "a node not registered",
      announce("n2", 5, { kind: "node", name: "x" }, "x"),
      NotFoundError,
      /node x: it is not registered/,
    ],
    ["its current key", announce("key-a", 5), ConflictError, /is the node's key already/],
    [
      "a key another node holds",
      announce("key-b", 5),
      ConflictError,
      /already registered to node b/,
    ],
    ["a moment already past", announce("n2", 0), RangeError, /must be ahead of now/],
    ["a moment over an hour ahead", announce("n2", 3_600_001), RangeError, /at most an hour ahead/],
  ];
  for (const [what, run, type, message] of cases) {
    await t.step(what, () => {
      const v = view();
      commit(v, register(v, "a"));
      commit(v, register(v, "b"));
      const before = rules.dumpOf(v);
      assert.throws(() => run(v), (err: Error) => err instanceof type && message.test(err.message));
      assert.deepEqual(rules.dumpOf(v), before);
    });
  }
  await t.step("a new announcement once the switch is due", () => {
    const { v } = rotating();
    assert.throws(
      () =>
        rules.announceKey(v, "a", { publicKey: "n3", switchAt: T0 + 20_000 }, {
          principal: { kind: "node", name: "a" },
          now: T0 + 10_000,
        }),
      (err: Error) =>
        err instanceof ConflictError && /registers with that key first/.test(err.message),
    );
  });
});

Deno.test("a single-use join token is used up in the registration's own change set", () => {
  const v = view();
  commit(v, rules.createToken(v, { id: "t", hash: "h", now: T0, singleUse: true }));
  const r = register(v, "a", { principal: { kind: "join", tokenId: "t" } });
  assert.equal(r.changes.tokens.get("t")?.used, true);
  assert.equal(v.token("t")?.used, false, "not before it commits");
});

Deno.test("subnets: a removed node's wait out the grace period, come back to it with its key, then go to the pool longest released first, after fresh ones", () => {
  const v = view();
  for (const n of ["a", "b", "c"]) commit(v, register(v, n)); // 10.9.0, .1, .2
  commit(v, rules.removeNode(v, "b", policy(T0)));
  commit(v, rules.removeNode(v, "a", policy(T0 + 1)));
  assert.deepEqual(v.quarantined().map((q) => [q.subnet, q.name, q.releaseAt]), [
    ["10.9.0.0/24", "a", T0 + 1 + GRACE],
    ["10.9.1.0/24", "b", T0 + GRACE],
    ["fd00:9:0:1::/64", "b", T0 + GRACE],
    ["fd00:9::/64", "a", T0 + 1 + GRACE],
  ]);
  // Within the grace period, b comes back to its own subnets; another key does not.
  const bBack = register(v, "b", { now: T0 + 10 });
  assert.deepEqual(bBack.result.node.subnets, ["10.9.1.0/24", "fd00:9:0:1::/64"]);
  assert.deepEqual(
    register(v, "b", { key: "other", now: T0 + 10 }).result.node.subnets,
    ["10.9.3.0/24", "fd00:9:0:3::/64"],
  );
  // After it, the expiry returns them in the order their grace period ended.
  const expired = commit(v, rules.expire(v, { ...policy(T0 + 2 * GRACE), leaseMs: 10 * GRACE }));
  assert.deepEqual(expired, { removed: [], released: 4, more: false });
  assert.equal(v.quarantined().length, 0);
  const next = ["d", "e", "f"].map((n) => commit(v, register(v, n)).node.subnets[0]);
  assert.deepEqual(next, ["10.9.3.0/24", "10.9.1.0/24", "10.9.0.0/24"]);
  assert.throws(() => register(v, "g"), PoolExhaustedError);
});

Deno.test("a registration returns subnets whose grace period is over before it allocates", () => {
  const v = view({ ...POOLS, podCidrs: ["10.9.0.0/23"] });
  commit(v, register(v, "a"));
  commit(v, register(v, "b"));
  commit(v, rules.removeNode(v, "a", policy()));
  const c = register(v, "c", { now: T0 + GRACE });
  assert.deepEqual(c.result.node.subnets, ["10.9.0.0/24"]);
  assert.equal(c.changes.quarantine.get("10.9.0.0/24"), null);
});

Deno.test("expire removes nodes not seen within the lease, at most a batch at a time", () => {
  const v = view({ ...POOLS, podCidrs: ["10.0.0.0/16"] });
  for (const n of ["a", "b", "c", "d"]) commit(v, register(v, n));
  commit(v, rules.heartbeat(v, "c", T0 + 50));
  const p = { ...policy(T0 + 100), leaseMs: 60, batch: 2 };
  const first = rules.expire(v, p);
  assert.deepEqual(first.result, { removed: ["a", "b"], released: 0, more: true });
  assert.deepEqual(first.changes.events.map((e) => e.type === "delete" && e.name), ["a", "b"]);
  commit(v, first);
  assert.deepEqual(commit(v, rules.expire(v, p)), { removed: ["d"], released: 0, more: false });
  assert.deepEqual(v.nodes().map((n) => n.name), ["c"]);
});

Deno.test("heartbeat, reset and remove of a name that is not registered say so", async (t) => {
  const v = view();
  const cases: [string, () => unknown, RegExp][] = [
    [
      "heartbeat",
      () => rules.heartbeat(v, "zz", T0),
      /Cannot renew the lease of node zz: it is not registered/,
    ],
    ["reset", () => rules.resetNode(v, "zz", "x"), /Cannot reset node zz: it is not registered/],
    [
      "remove",
      () => rules.removeNode(v, "zz", policy()),
      /Cannot remove node zz: it is not registered/,
    ],
    ["remove client", () => rules.removeClient(v, "zz"), /Cannot remove client zz: no such client/],
    [
      "revoke token",
      () => rules.revokeToken(v, "zz"),
      /Cannot revoke join token zz: no such token/,
    ],
  ];
  for (const [what, run, message] of cases) {
    await t.step(
      what,
      () => assert.throws(run, (e: Error) => e instanceof NotFoundError && message.test(e.message)),
    );
  }
});

Deno.test("a heartbeat renews the lease and tells peers nothing", () => {
  const v = view();
  commit(v, register(v, "a"));
  const hb = rules.heartbeat(v, "a", T0 + 9);
  assert.equal(hb.result.lastSeenAt, T0 + 9);
  assert.deepEqual(hb.changes.events, []);
});

Deno.test("clients: addresses from each client pool, back to the pool at once on removal", () => {
  const v = view();
  const c = commit(v, rules.addClient(v, { name: "laptop", publicKey: "kl" }, T0));
  assert.deepEqual(c.addresses, ["100.64.0.1/32", "fd00:64::1/128"]);
  assert.throws(
    () => rules.addClient(v, { name: "laptop", publicKey: "k2" }, T0),
    /a client of that name exists/,
  );
  commit(v, rules.addClient(v, { name: "phone", publicKey: "kp" }, T0));
  assert.throws(
    () => rules.addClient(v, { name: "tablet", publicKey: "kt" }, T0),
    (e: Error) =>
      e instanceof PoolExhaustedError &&
      /Cannot add client tablet: the client pool 100\.64\.0\.0\/30 is exhausted \(2 of 2 addresses taken\)/
        .test(e.message),
  );
  const gone = rules.removeClient(v, "laptop");
  assert.deepEqual(gone.changes.events, [{
    type: "delete",
    kind: "client",
    name: "laptop",
    publicKey: "kl",
  }]);
  commit(v, gone);
  assert.deepEqual(
    commit(v, rules.addClient(v, { name: "tablet", publicKey: "kt" }, T0)).addresses[0],
    "100.64.0.1/32",
  );
  const none = view({ ...POOLS, clientCidrs: [] });
  assert.throws(
    () => rules.addClient(none, { name: "x", publicKey: "k" }, T0),
    (e: Error) => e instanceof ConflictError && /--client-cidr/.test(e.message),
  );
});

Deno.test("tokens: a chosen id replaces the token with the same secret; only join tokens are revoked", () => {
  const v = view();
  commit(v, rules.putToken(v, { id: "admin", kind: "admin", hash: "h1", now: T0 }));
  const moved = rules.putToken(v, { id: "other", kind: "join", hash: "h1", now: T0 });
  assert.equal(moved.changes.tokens.get("admin"), null, "one secret, one token");
  commit(v, moved);
  assert.equal(v.tokenByHash("h1")?.id, "other");
  const t = commit(v, rules.createToken(v, { id: "t", hash: "h2", now: T0, ttlMs: 5 }));
  assert.deepEqual(t, {
    id: "t",
    kind: "join",
    expiresAt: T0 + 5,
    singleUse: false,
    used: false,
    createdAt: T0,
  });
  assert.throws(() => rules.createToken(v, { id: "u", hash: "h2", now: T0 }), ConflictError);
  commit(v, rules.putToken(v, { id: "admin", kind: "admin", hash: "h3", now: T0 }));
  assert.throws(() => rules.revokeToken(v, "admin"), NotFoundError);
});

Deno.test("a flag is set once by initFlag and replaced by setFlag", () => {
  const v = view();
  assert.equal(commit(v, rules.initFlag(v, "x", "1")), true);
  const again = rules.initFlag(v, "x", "2");
  assert.equal(again.result, false);
  assert.equal(again.changes.flags.size, 0);
  commit(v, rules.setFlag(v, "x", "3"));
  assert.equal(v.flag("x"), "3");
});

Deno.test("peer changes from before and after", () => {
  const p = (publicKey: string, endpoint = "e"): PeerEntry => ({
    kind: "node" as const,
    name: "a",
    publicKey,
    endpoint,
    allowedIps: ["s"],
  });
  const cases: [
    string,
    PeerEntry | undefined,
    PeerEntry | undefined,
    string[],
  ][] = [
    ["nothing", undefined, undefined, []],
    ["new", undefined, p("k"), ["upsert"]],
    ["gone", p("k"), undefined, ["delete"]],
    ["unchanged", p("k"), p("k"), []],
    ["moved", p("k"), p("k", "f"), ["upsert"]],
    ["new key", p("k"), p("j"), ["upsert"]],
    ["next key", p("k"), { ...p("k"), nextKey: { publicKey: "j", switchAt: 1 } }, ["upsert"]],
  ];
  for (const [what, before, after, types] of cases) {
    assert.deepEqual(peerChanges(before, after).map((e) => e.type), types, what);
  }
});

Deno.test("a dump read back into an empty view is the same dump", () => {
  const v = view();
  for (const n of ["a", "b", "c"]) commit(v, register(v, n));
  commit(v, rules.removeNode(v, "b", policy()));
  commit(v, rules.addClient(v, { name: "laptop", publicKey: "kl" }, T0));
  commit(v, rules.setFlag(v, "cluster-id", "abc"));
  const dump = rules.dumpOf(v);
  const copy = new MemoryClusterState(new PoolLayout(dump.pools));
  commit(copy, rules.fromDump(copy, dump));
  assert.deepEqual(rules.dumpOf(copy), dump);
  assert.deepEqual(rules.usage(copy), rules.usage(v));
  rules.checkHoldings(copy);
  assert.equal(
    commit(copy, register(copy, "d")).node.subnets[0],
    "10.9.3.0/24",
    "held ones are skipped",
  );
});

Deno.test("a view whose pools lost what a record holds is refused", () => {
  const v = view();
  commit(v, register(v, "a"));
  v.ipamStore(v.layout.slots[0]!.namespace).unbind("10.9.0.0/24");
  assert.throws(
    () => rules.checkHoldings(v),
    (e: Error) =>
      e instanceof StoreCorruptError &&
      /10\.9\.0\.0\/24 of node a is not allocated in its pool/.test(e.message),
  );
});

Deno.test("pools may change while a store holds nothing, not after", () => {
  const other = { ...POOLS, podCidrs: ["10.99.0.0/16"] };
  rules.checkSamePools("the store", POOLS, other, false);
  rules.checkSamePools("the store", undefined, other, true);
  rules.checkSamePools("the store", POOLS, POOLS, true);
  assert.throws(
    () => rules.checkSamePools("the store", POOLS, other, true),
    (e: Error) =>
      e instanceof StoreCorruptError &&
      /^Cannot open the store with pod pools 10\.99\.0\.0\/16 .*not supported$/.test(e.message),
  );
});
