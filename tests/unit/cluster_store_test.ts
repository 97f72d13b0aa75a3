/**
 * The SQLite cluster store on its own: what survives a reopen, which files it
 * refuses to open, the bounded event log, and the input edges (names,
 * endpoints, pools, durations) it relies on.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { StoreCorruptError } from "../../lib/errors.ts";
import { getLogger } from "../../lib/log.ts";
import { nameProblem, parseEndpoint } from "../../lib/api/schemas.ts";
import { normalizePools } from "../../lib/store/cluster_pools.ts";
import { hashSecret, type PoolConfig } from "../../lib/store/cluster_store.ts";
import { SCHEMA_VERSION } from "../../lib/store/cluster_sqlite.ts";
import { openClusterState } from "../../modes/cluster/state.ts";
import { bootstrapTokens } from "../../modes/cluster/bootstrap.ts";
import { formatDuration, parseDuration } from "../../modes/cluster/duration.ts";
import { DEFAULT_POOLS, randomKey } from "./_cluster_fixture.ts";

const logger = getLogger("test");
const T0 = 1_700_000_000_000;

function open(dir: string, pools: PoolConfig = DEFAULT_POOLS, historyLimit?: number) {
  return openClusterState(dir, {
    pools: normalizePools(pools),
    graceMs: 60_000,
    logger,
    ...(historyLimit !== undefined ? { historyLimit } : {}),
  });
}

function withDir(fn: (dir: string) => void | Promise<void>) {
  return async () => {
    const dir = Deno.makeTempDirSync({ prefix: "wgcni-store-test-" });
    try {
      await fn(dir);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  };
}

const node = (name: string, key = randomKey()) => ({
  name,
  publicKey: key,
  endpoint: "192.0.2.1:51820",
});
const join_ = { kind: "join", tokenId: "join" } as const;
const admin = { kind: "admin" } as const;

Deno.test(
  "a reopened store has every node, client, subnet, token and the revision",
  withDir(async (dir) => {
    let store = open(dir);
    await bootstrapTokens(store, { dataDir: dir, now: T0 });
    const a = store.registerNode(node("a"), { principal: join_, credential: "cred-a", now: T0 });
    store.registerNode(node("b"), { principal: join_, credential: "cred-b", now: T0 });
    store.addClient({ name: "laptop", publicKey: randomKey() }, T0);
    store.createToken({ secret: "some-secret", now: T0, ttlMs: 1000, singleUse: true });
    store.removeNode("b", T0);
    const before = {
      nodes: store.listNodes(),
      clients: store.listClients(),
      tokens: store.listTokens(),
      snapshot: store.snapshot(),
      usage: store.usage(),
      events: store.eventsSince(0),
    };
    store.close();

    store = open(dir);
    assert.deepEqual(store.listNodes(), before.nodes);
    assert.deepEqual(store.listClients(), before.clients);
    assert.deepEqual(store.listTokens(), before.tokens);
    assert.deepEqual(store.snapshot(), before.snapshot);
    assert.deepEqual(store.usage(), before.usage);
    assert.deepEqual(store.eventsSince(0), before.events);
    assert.equal(store.revision(), 4);
    assert.equal(store.findNodeByCredential("cred-a")?.name, "a");
    assert.equal(store.findToken("some-secret")?.singleUse, true);
    // The bootstrap tokens are not generated again.
    assert.deepEqual(await bootstrapTokens(store, { dataDir: dir, now: T0 }), []);
    // New subnets never collide with the ones kept (b's are in their grace period).
    const c = store.registerNode(node("c"), { principal: join_, credential: "cred-c", now: T0 });
    assert.ok(!c.node.subnets.some((s) => a.node.subnets.includes(s)));
    store.close();
  }),
);

Deno.test(
  "secrets are kept only as SHA-256 hashes",
  withDir(async (dir) => {
    const store = open(dir);
    const lines = await bootstrapTokens(store, {
      dataDir: dir,
      adminToken: "admin-secret-0123456789",
      now: T0,
    });
    assert.equal(lines.length, 1, "where the generated join token is, is shown");
    const joinToken = Deno.readTextFileSync(join(dir, "join-token")).trim();
    assert.equal(Deno.statSync(join(dir, "join-token")).mode! & 0o777, 0o600);
    assert.match(lines[0]!, /generated the join token into \S+join-token \(mode 0600\)/);
    assert.ok(!lines.join("\n").includes(joinToken), "a generated token is not printed");
    assert.ok(!lines.join("\n").includes("admin-secret"), "a given token is not printed");
    assert.throws(() => Deno.statSync(join(dir, "admin-token")), Deno.errors.NotFound);
    store.registerNode(node("a"), { principal: admin, credential: "node-cred-abc", now: T0 });
    store.close();
    const raw = new TextDecoder("latin1").decode(Deno.readFileSync(join(dir, "cluster.db")));
    const wal = (() => {
      try {
        return new TextDecoder("latin1").decode(Deno.readFileSync(join(dir, "cluster.db-wal")));
      } catch {
        return "";
      }
    })();
    for (const secret of ["admin-secret-0123456789", joinToken, "node-cred-abc"]) {
      assert.ok(!raw.includes(secret) && !wal.includes(secret), "no plain secret in the store");
    }
    assert.ok(
      raw.includes(hashSecret("node-cred-abc")) || wal.includes(hashSecret("node-cred-abc")),
    );
    assert.equal(Deno.statSync(join(dir, "cluster.db")).mode! & 0o777, 0o600);
  }),
);

/** Opens the store in `dir` again for `fn`, and closes it whatever happens. */
function reopened(dir: string, fn: (store: ReturnType<typeof open>) => void): void {
  const again = open(dir);
  try {
    fn(again);
  } finally {
    again.close();
  }
}

/** A store in `dir` with node a registered, then changed behind wgcni's back by `sql`. */
function nodeAThen(dir: string, sql: readonly string[]): void {
  const store = open(dir);
  store.registerNode(node("a"), { principal: admin, credential: "cred-a", now: T0 });
  store.close();
  const db = new DatabaseSync(join(dir, "cluster.db"));
  for (const statement of sql) db.exec(statement);
  db.close();
}

/** Stores changed behind wgcni's back in ways it refuses to open: the change, and why. */
const REFUSED_STORES: [string, (db: DatabaseSync) => void, RegExp][] = [
  [
    "a store written by a newer schema is refused",
    (db) =>
      db.prepare("UPDATE cluster_meta SET value = ? WHERE key = 'schema_version'").run(
        String(SCHEMA_VERSION + 1),
      ),
    /newer wgcni/,
  ],
  [
    "a store with a missing table is refused",
    (db) => db.exec("DROP TABLE cluster_nodes"),
    /cluster_nodes is missing/,
  ],
  [
    "a store with the pool tables of an earlier development build is refused",
    (db) => db.exec("CREATE TABLE cluster_pool_items (pool TEXT NOT NULL, idx TEXT NOT NULL)"),
    /cluster_pool_items/,
  ],
];

for (const [name, change, why] of REFUSED_STORES) {
  Deno.test(
    name,
    withDir((dir) => {
      open(dir).close();
      const db = new DatabaseSync(join(dir, "cluster.db"));
      change(db);
      db.close();
      assert.throws(
        () => open(dir),
        (err: Error) => err instanceof StoreCorruptError && why.test(err.message),
      );
    }),
  );
}

Deno.test(
  "a row that does not read back stops the store from opening",
  withDir((dir) => {
    nodeAThen(dir, ["UPDATE cluster_nodes SET subnets = '[not json'"]);
    assert.throws(
      () => open(dir),
      (err: Error) => err instanceof StoreCorruptError && /does not read back/.test(err.message),
    );
  }),
);

Deno.test(
  "a store whose pools lost a subnet or address its rows hold is refused",
  withDir((dir) => {
    const store = open(dir);
    const a = store.registerNode(node("a"), { principal: admin, credential: "a", now: T0 });
    store.registerNode(node("b"), { principal: admin, credential: "b", now: T0 });
    store.removeNode("b", T0);
    const c = store.addClient({ name: "laptop", publicKey: randomKey() }, T0);
    store.close();
    const forget = (ns: string) => {
      const db = new DatabaseSync(join(dir, "cluster.db"));
      db.prepare("DELETE FROM ipam_bindings WHERE ns LIKE ?").run(ns);
      db.close();
    };
    const copy = (from: string, to: string) => Deno.copyFileSync(join(dir, from), join(dir, to));
    copy("cluster.db", "intact.db");
    const cases: [string, RegExp][] = [
      ["cluster/pod/10.%", new RegExp(`${a.node.subnets[0]!.replace(/\./g, "\\.")} of node a`)],
      ["cluster/pod/fd00%", /of (node a|removed node b \(in its grace period\))/],
      ["cluster/client/%", new RegExp(`${c.addresses[0]!.replace(/\./g, "\\.")} of client laptop`)],
    ];
    for (const [ns, re] of cases) {
      copy("intact.db", "cluster.db");
      forget(ns);
      assert.throws(
        () => open(dir),
        (err: Error) =>
          err instanceof StoreCorruptError && /is not allocated in its pool/.test(err.message) &&
          re.test(err.message),
        ns,
      );
    }
    copy("intact.db", "cluster.db");
    open(dir).close();
  }),
);

Deno.test(
  "a store whose pools name their owners at random, as earlier versions wrote them, releases and reuses by subnet",
  withDir((dir) => {
    const pools = { ...DEFAULT_POOLS, podCidrs: ["10.9.0.0/23"], nodeMaskV4: 24 };
    let store = open(dir, pools);
    const a = store.registerNode(node("a"), { principal: admin, credential: "a", now: T0 });
    store.registerNode(node("b"), { principal: admin, credential: "b", now: T0 });
    store.close();
    const db = new DatabaseSync(join(dir, "cluster.db"));
    db.exec("UPDATE ipam_bindings SET owner = lower(hex(randomblob(16)))");
    db.close();
    store = open(dir, pools);
    store.removeNode("a", T0);
    store.expire(T0 + 60_000, 3_600_000);
    const c = store.registerNode(node("c"), {
      principal: admin,
      credential: "c",
      now: T0 + 60_000,
    });
    assert.deepEqual(c.node.subnets, a.node.subnets);
    store.close();
  }),
);

Deno.test(
  "a data directory whose store file belongs to another cluster is refused",
  withDir((dir) => {
    open(dir).close();
    Deno.writeTextFileSync(join(dir, "cluster.id"), "someothercluster\n");
    assert.throws(
      () => open(dir),
      (err: Error) => err instanceof StoreCorruptError && /belongs to cluster/.test(err.message),
    );
  }),
);

Deno.test(
  "pools may change while the store is empty, not once it holds nodes",
  withDir((dir) => {
    const other = { ...DEFAULT_POOLS, podCidrs: ["10.99.0.0/16"] };
    open(dir).close();
    const s = open(dir, other);
    assert.deepEqual(s.pools.podCidrs, ["10.99.0.0/16"]);
    s.registerNode(node("a"), { principal: admin, credential: "c", now: T0 });
    s.close();
    assert.throws(() => open(dir), /not supported/);
    open(dir, other).close();
  }),
);

Deno.test(
  "the event log keeps a bounded history and says when a revision is too old",
  withDir((dir) => {
    const store = open(dir, DEFAULT_POOLS, 5);
    for (let i = 0; i < 12; i++) {
      store.registerNode(node(`n${i}`), { principal: admin, credential: `c${i}`, now: T0 });
    }
    assert.equal(store.revision(), 12);
    assert.equal(store.eventsSince(6), undefined, "revision 7 is the oldest kept");
    assert.deepEqual(store.eventsSince(7)?.map((e) => e.revision), [8, 9, 10, 11, 12]);
    assert.deepEqual(store.eventsSince(12), []);
    assert.equal(store.eventsSince(13), undefined);
    store.close();
    const db = new DatabaseSync(join(dir, "cluster.db"));
    const n = (db.prepare("SELECT count(*) AS n FROM cluster_events").get() as { n: number }).n;
    assert.equal(n, 5, "older events are deleted, not just hidden");
    db.close();
  }),
);

Deno.test(
  "listeners hear each committed change once and nothing of a refused one",
  withDir((dir) => {
    const store = open(dir, { ...DEFAULT_POOLS, podCidrs: ["10.9.0.0/24"], nodeMaskV4: 25 });
    const heard: number[] = [];
    const stop = store.listen((e) => heard.push(e.revision));
    store.registerNode(node("a"), { principal: admin, credential: "a", now: T0 });
    store.registerNode(node("b"), { principal: admin, credential: "b", now: T0 });
    assert.throws(
      () => store.registerNode(node("c"), { principal: admin, credential: "c", now: T0 }),
      /exhausted/,
    );
    assert.equal(store.getNode("c"), undefined);
    stop();
    store.removeNode("a", T0);
    assert.deepEqual(heard, [1, 2]);
    store.close();
  }),
);

Deno.test("node names are DNS labels joined by dots", () => {
  for (const ok of ["a", "node-1", "ip-10-0-0-1.ec2.internal", "x".repeat(63)]) {
    assert.equal(nameProblem(ok), undefined, ok);
  }
  for (const bad of ["", "A", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", "é", "x".repeat(64)]) {
    assert.notEqual(nameProblem(bad), undefined, bad);
  }
});

Deno.test("endpoints are normalised to canonical IP:PORT", () => {
  const cases: [string, string][] = [
    ["192.0.2.1:51820", "192.0.2.1"],
    ["[2001:DB8:0::0001]:51820", "2001:db8::1"],
    ["[::ffff:192.0.2.7]:51820", "192.0.2.7"],
    ["10.1.2.3:1", "10.1.2.3"],
  ];
  for (const [text, address] of cases) assert.equal(parseEndpoint(text).address, address, text);
  assert.equal(parseEndpoint("[2001:db8::1]:7").family, 6);
  assert.equal(parseEndpoint("[::ffff:192.0.2.7]:7").family, 4);
  assert.throws(() => parseEndpoint("255.255.255.255:1"), /broadcast/);
  assert.throws(() => parseEndpoint("[ff02::1]:1"), /multicast/);
  assert.throws(() => parseEndpoint("127.0.0.1:1"), /loopback/);
  assert.throws(() => parseEndpoint("1.2.3.4:65536"), /65536/);
});

Deno.test("pool settings are normalised and checked", () => {
  const p = normalizePools({
    podCidrs: ["FD00:10:244::/56", "10.244.0.0/16"],
    clientCidrs: ["100.64.0.0/24"],
    nodeMaskV4: 24,
    nodeMaskV6: 64,
  });
  assert.deepEqual(p.podCidrs, ["10.244.0.0/16", "fd00:10:244::/56"]);
  assert.throws(
    () => normalizePools({ ...p, podCidrs: ["10.0.0.0/8"], clientCidrs: ["10.1.0.0/16"] }),
    /overlap/,
  );
  assert.throws(() => normalizePools({ ...p, nodeMaskV4: 31 }), /at most \/30/);
  assert.throws(() => normalizePools({ ...p, nodeMaskV6: 48 }), /the pool is smaller/);
  assert.throws(() => normalizePools({ ...p, podCidrs: [] }), /--pod-cidr/);
});

Deno.test("durations read and write as operators write them", () => {
  assert.equal(parseDuration("90s"), 90_000);
  assert.equal(parseDuration("1h30m"), 5_400_000);
  assert.equal(parseDuration("7d"), 604_800_000);
  assert.equal(parseDuration("250ms"), 250);
  for (const bad of ["", "10", "h", "1.5h", "-1h", "0s", "1y"]) {
    assert.throws(() => parseDuration(bad), RangeError, bad);
  }
  assert.equal(formatDuration(5_400_000), "1h30m");
  assert.equal(formatDuration(86_400_000 + 1000), "1d1s");
});

Deno.test(
  "group commit: the writes of one turn commit together, a refused one alone is undone",
  withDir(async (dir) => {
    const store = openClusterState(dir, {
      pools: normalizePools(DEFAULT_POOLS),
      graceMs: 60_000,
      logger,
      groupCommit: true,
    });
    try {
      const seen: number[] = [];
      store.listen((e) => seen.push(e.revision));
      const before = store.revision();
      const keyA = randomKey();
      store.registerNode(node("a", keyA), { principal: admin, credential: "a", now: T0 });
      store.registerNode(node("b"), { principal: admin, credential: "b", now: T0 });
      assert.throws(
        () => store.registerNode(node("c", keyA), { principal: admin, credential: "c", now: T0 }),
        /already registered to node a/,
      );
      // Nothing is published before the commit: no revision, no event.
      assert.equal(store.revision(), before);
      assert.deepEqual(seen, []);
      await store.committed();
      assert.equal(store.revision(), before + 2);
      assert.deepEqual(seen, [before + 1, before + 2]);
      assert.deepEqual(store.listNodes().map((n) => n.name), ["a", "b"]);
      assert.equal(store.eventsSince(before)?.length, 2);

      // A write outside the group (here a client) commits the open group first.
      store.heartbeat("a", T0 + 1000);
      store.addClient({ name: "laptop", publicKey: randomKey() }, T0);
      assert.equal(store.getNode("a")?.lastSeenAt, T0 + 1000);
      assert.equal(store.revision(), before + 3);
      await store.committed();
    } finally {
      store.close();
    }
    // Durable: a reopened store has what was committed.
    reopened(dir, (again) => {
      assert.deepEqual(again.listNodes().map((n) => [n.name, n.lastSeenAt]), [
        ["a", T0 + 1000],
        ["b", T0],
      ]);
      assert.deepEqual(again.listClients().map((c) => c.name), ["laptop"]);
    });
  }),
);

Deno.test(
  "group commit: closing commits an open group",
  withDir((dir) => {
    const pools = normalizePools(DEFAULT_POOLS);
    const store = openClusterState(dir, { pools, graceMs: 60_000, logger, groupCommit: true });
    store.registerNode(node("a"), { principal: admin, credential: "a", now: T0 });
    store.close();
    reopened(dir, (again) => assert.deepEqual(again.listNodes().map((n) => n.name), ["a"]));
  }),
);

Deno.test(
  "a store of the schema before NAT'd nodes opens, keeps its nodes, and holds the mark after a reopen",
  withDir((dir) => {
    // Node a in a store taken back to schema 2: no nat column.
    nodeAThen(dir, [
      "ALTER TABLE cluster_nodes DROP COLUMN mtu",
      "ALTER TABLE cluster_nodes DROP COLUMN next_key",
      "ALTER TABLE cluster_nodes DROP COLUMN nat",
      "UPDATE cluster_meta SET value = '2' WHERE key = 'schema_version'",
    ]);
    reopened(dir, (again) => {
      assert.equal(again.getNode("a")?.nat, undefined);
      again.registerNode(
        {
          ...node("b"),
          endpoint: "10.9.0.2:51820",
          detectEndpoint: true,
          seenFrom: "198.51.100.2",
        },
        { principal: admin, credential: "cred-b", now: T0 },
      );
    });
    reopened(dir, (third) => {
      assert.deepEqual([third.getNode("b")?.nat, third.getNode("b")?.endpoint], [
        true,
        "198.51.100.2:51820",
      ]);
      assert.equal(third.getNode("a")?.nat, undefined);
    });
  }),
);

Deno.test(
  "a store of the schema before key rotation opens, keeps its nodes, and holds a next key after a reopen",
  withDir((dir) => {
    nodeAThen(dir, [
      "ALTER TABLE cluster_nodes DROP COLUMN mtu",
      "ALTER TABLE cluster_nodes DROP COLUMN next_key",
      "UPDATE cluster_meta SET value = '3' WHERE key = 'schema_version'",
    ]);
    const next = { publicKey: "next-a", switchAt: T0 + 60_000 };
    reopened(dir, (again) => {
      assert.equal(again.getNode("a")?.nextKey, undefined);
      again.announceKey("a", next, { principal: { kind: "node", name: "a" }, now: T0 });
    });
    reopened(dir, (third) => assert.deepEqual(third.getNode("a")?.nextKey, next));
  }),
);

Deno.test(
  "a store of the schema before nodes reported their link MTU opens and keeps the MTU after a reopen",
  withDir((dir) => {
    nodeAThen(dir, [
      "ALTER TABLE cluster_nodes DROP COLUMN mtu",
      "UPDATE cluster_meta SET value = '4' WHERE key = 'schema_version'",
    ]);
    reopened(dir, (again) => {
      assert.equal(again.getNode("a")?.mtu, undefined);
      again.registerNode({ ...node("b"), mtu: 1400 }, {
        principal: admin,
        credential: "cred-b",
        now: T0,
      });
    });
    reopened(dir, (third) => {
      assert.equal(third.getNode("b")?.mtu, 1400);
      assert.equal(third.snapshot().peers.find((p) => p.name === "b")?.mtu, 1400);
    });
  }),
);
