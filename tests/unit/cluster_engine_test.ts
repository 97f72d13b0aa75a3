/**
 * What every engine of the cluster store must do with the rules' change
 * sets, the same cases on each: memory, SQLite (with group commit, as
 * `cluster serve` runs it) and etcd (a real one-member etcd: the one
 * WGCNI_TEST_ETCD names, or one this file starts; skipped without an
 * `etcd` binary). A write is read back at once and heard once, in revision
 * order; a refused one leaves nothing; replay and snapshots agree; subnets
 * come in the same order everywhere; state survives reopening.
 */
import assert from "node:assert/strict";
import type { WatchEvent } from "../../lib/api/cluster_types.ts";
import { ConflictError, PoolExhaustedError } from "../../lib/errors.ts";
import { getLogger } from "../../lib/log.ts";
import {
  type ClusterStore,
  MemoryClusterStore,
  normalizePools,
  type PoolConfig,
} from "../../lib/store/mod.ts";
import { connect, EtcdClusterStore } from "../../lib/store/cluster_etcd.ts";
import { openClusterState } from "../../modes/cluster/state.ts";
import { hasEtcd, startEtcd } from "./_etcd.ts";

const T0 = 1_700_000_000_000;
const logger = getLogger("test");
const POOLS: PoolConfig = {
  podCidrs: ["10.9.0.0/22", "fd00:9::/62"],
  clientCidrs: ["100.64.0.0/24"],
  nodeMaskV4: 24,
  nodeMaskV6: 64,
};
const admin = { kind: "admin" } as const;

interface Settings {
  readonly pools?: PoolConfig;
  readonly graceMs?: number;
  readonly historyLimit?: number;
}

/** A store of one engine, and what else that engine can do with the same data. */
interface Opened extends AsyncDisposable {
  store: ClusterStore;
  /** Closes the store and opens its data again (undefined: nothing survives this engine). */
  reopen?: () => Promise<void>;
  /** A second store over the same data (undefined: one writer only). */
  replica?: () => Promise<ClusterStore>;
}

type Engine = (settings: Settings) => Promise<Opened>;

function options(s: Settings) {
  return {
    pools: normalizePools(s.pools ?? POOLS),
    graceMs: s.graceMs ?? 1000,
    logger,
    ...(s.historyLimit !== undefined ? { historyLimit: s.historyLimit } : {}),
  };
}

const memory: Engine = (s) => {
  const store = new MemoryClusterStore(options(s));
  return Promise.resolve({ store, [Symbol.asyncDispose]: async () => await store.close() });
};

const sqlite: Engine = (s) => {
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-engine-test-" });
  const open = () => openClusterState(dir, { ...options(s), groupCommit: true });
  const o: Opened = {
    store: open(),
    reopen: async () => {
      await o.store.close();
      o.store = open();
    },
    [Symbol.asyncDispose]: async () => {
      await o.store.close();
      Deno.removeSync(dir, { recursive: true });
    },
  };
  return Promise.resolve(o);
};

const etcdOn = (endpoints: readonly string[]): Engine => async (s) => {
  const prefix = `/wgcni-engine-${crypto.randomUUID()}/`;
  const open = () => EtcdClusterStore.open({ endpoints, prefix, ...options(s) });
  const others: ClusterStore[] = [];
  const o: Opened = {
    store: await open(),
    reopen: async () => {
      await o.store.close();
      o.store = await open();
    },
    replica: async () => {
      const r = await open();
      others.push(r);
      return r;
    },
    [Symbol.asyncDispose]: async () => {
      for (const x of [o.store, ...others]) await x.close();
      const c = connect({ endpoints });
      await c.delete().prefix(prefix);
      c.close();
    },
  };
  return o;
};

const node = (name: string, key = `key-${name}-${crypto.randomUUID()}`) => ({
  name,
  publicKey: key,
  endpoint: "192.0.2.1:51820",
});

/** Registers as the API does: the answer counts once the write is durable. */
async function register(store: ClusterStore, name: string, now = T0, key?: string) {
  const r = await store.registerNode(node(name, key), { principal: admin, credential: name, now });
  await store.committed();
  return r.node;
}

function heard(store: ClusterStore): WatchEvent[] {
  const events: WatchEvent[] = [];
  store.listen((e) => events.push(e));
  return events;
}

const CASES: { name: string; fn: (engine: Engine) => Promise<void> }[] = [
  {
    name: "a committed write reads back at once and is heard once, in revision order",
    fn: async (engine) => {
      await using o = await engine({});
      const { store } = o;
      const events = heard(store);
      const before = store.revision();
      const a = await register(store, "a");
      const b = await register(store, "b");
      assert.deepEqual(store.listNodes().map((n) => n.name), ["a", "b"]);
      assert.deepEqual(store.getNode("a")?.subnets, a.subnets);
      assert.equal(store.findNodeByCredential("b")?.name, "b");
      assert.deepEqual(events.map((e) => e.type === "upsert" && e.peer.name), ["a", "b"]);
      assert.ok(before < events[0]!.revision && events[0]!.revision < events[1]!.revision);
      assert.equal(store.revision(), events[1]!.revision);
      assert.deepEqual(store.snapshot().peers.map((p) => p.allowedIps), [a.subnets, b.subnets]);
      assert.deepEqual(store.eventsSince(before), events);
    },
  },
  {
    name: "a refused write changes nothing and is heard by no one",
    fn: async (engine) => {
      await using o = await engine({});
      const { store } = o;
      await register(store, "a", T0, "held-key");
      const before = JSON.stringify([store.revision(), store.dump(), store.usage()]);
      const events = heard(store);
      await assert.rejects(
        async () => await register(store, "b", T0, "held-key"),
        (e: Error) => e instanceof ConflictError && /already registered to node a/.test(e.message),
      );
      await assert.rejects(async () => await store.removeClient("nobody"), /no such client/);
      assert.equal(JSON.stringify([store.revision(), store.dump(), store.usage()]), before);
      assert.deepEqual(events, []);
    },
  },
  {
    name: "subnets come fresh first, then the longest released, then the pool is exhausted",
    fn: async (engine) => {
      await using o = await engine({ graceMs: 1000 });
      const { store } = o;
      const got = [];
      for (const n of ["a", "b", "c"]) got.push((await register(store, n)).subnets[0]);
      assert.deepEqual(got, ["10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24"]);
      await store.removeNode("b", T0);
      await store.removeNode("a", T0 + 1);
      assert.deepEqual(await store.expire(T0 + 2000, 3_600_000), []);
      const next = [];
      for (const n of ["d", "e", "f"]) next.push((await register(store, n, T0 + 2000)).subnets);
      assert.deepEqual(next.map((s) => s[0]), ["10.9.3.0/24", "10.9.1.0/24", "10.9.0.0/24"]);
      assert.deepEqual(next.map((s) => s[1]), [
        "fd00:9:0:3::/64",
        "fd00:9:0:1::/64",
        "fd00:9::/64",
      ]);
      await assert.rejects(async () => await register(store, "g", T0 + 2000), PoolExhaustedError);
      assert.deepEqual(store.usage().map((u) => [u.cidr, u.used, u.total]), [
        ["10.9.0.0/22", 4, 4],
        ["fd00:9::/62", 4, 4],
        ["100.64.0.0/24", 0, 254],
      ]);
    },
  },
  {
    name: "a new key is one upsert, and the snapshot has only the new",
    fn: async (engine) => {
      await using o = await engine({});
      const { store } = o;
      await register(store, "a", T0, "old");
      const since = store.revision();
      await register(store, "a", T0 + 1, "new");
      const events = store.eventsSince(since)!;
      assert.deepEqual(
        events.map((e) => e.type === "upsert" ? `upsert ${e.peer.publicKey}` : `${e.type} old`),
        ["upsert new"],
      );
      assert.deepEqual(store.snapshot().peers.map((p) => p.publicKey), ["new"]);
      assert.equal(store.snapshot().revision, store.revision());
    },
  },
  {
    name:
      "a next key is kept, survives reopening, holds its key, and the registration with it ends the rotation in one upsert",
    fn: async (engine) => {
      await using o = await engine({});
      await register(o.store, "a", T0, "old");
      const next = { publicKey: "new", switchAt: T0 + 10_000 };
      await o.store.announceKey("a", next, { principal: { kind: "node", name: "a" }, now: T0 });
      await o.store.committed();
      await o.reopen?.();
      assert.deepEqual(o.store.getNode("a")?.nextKey, next);
      assert.deepEqual(o.store.snapshot().peers.map((p) => [p.publicKey, p.nextKey]), [[
        "old",
        next,
      ]]);
      await assert.rejects(async () => await register(o.store, "b", T0, "new"), ConflictError);
      const since = o.store.revision();
      await register(o.store, "a", T0 + 10_001, "new");
      assert.deepEqual(
        o.store.eventsSince(since)?.map((e) =>
          e.type === "upsert" ? [e.type, e.peer.publicKey, e.peer.nextKey] : [e.type]
        ),
        [["upsert", "new", undefined]],
      );
      await o.reopen?.();
      assert.equal(o.store.getNode("a")?.nextKey, undefined);
      // The old key is free again.
      await register(o.store, "b", T0, "old");
    },
  },
  {
    name:
      "replay covers the kept history only; ahead of the store or behind it, a snapshot is needed",
    fn: async (engine) => {
      await using o = await engine({ historyLimit: 3 });
      const { store } = o;
      const revs = [store.revision()];
      for (const n of ["a", "b", "c", "d", "e"]) {
        await store.addClient({ name: n, publicKey: `key-${n}` }, T0);
        revs.push(store.revision());
      }
      assert.equal(store.eventsSince(revs[0]!), undefined, "pruned");
      assert.deepEqual(store.eventsSince(revs[2]!)?.map((e) => e.revision), revs.slice(3));
      assert.deepEqual(store.eventsSince(revs[5]!), []);
      assert.equal(store.eventsSince(revs[5]! + 1), undefined, "ahead");
    },
  },
  {
    name: "everything survives reopening, and the revision does not go back",
    fn: async (engine) => {
      await using o = await engine({ graceMs: 60_000 });
      if (o.reopen === undefined) return;
      await register(o.store, "a");
      await register(o.store, "b");
      await o.store.heartbeat("a", T0 + 5, { pods: 3, ready: true });
      await o.store.removeNode("b", T0);
      await o.store.addClient({ name: "laptop", publicKey: "kl" }, T0);
      await o.store.createToken({ secret: "s".repeat(20), now: T0, singleUse: true });
      await o.store.setFlag("example", "abc");
      await o.store.committed();
      const before = { dump: o.store.dump(), usage: o.store.usage(), peers: o.store.snapshot() };
      await o.reopen();
      assert.deepEqual(o.store.dump(), before.dump);
      assert.deepEqual(o.store.usage(), before.usage);
      assert.deepEqual(o.store.snapshot().peers, before.peers.peers);
      assert.ok(o.store.revision() >= before.peers.revision);
      const a = o.store.getNode("a");
      assert.deepEqual([a?.lastSeenAt, a?.pods, a?.ready], [T0 + 5, 3, true], "the report too");
      // b's subnets are still in their grace period: c gets fresh ones.
      assert.deepEqual((await register(o.store, "c")).subnets, ["10.9.2.0/24", "fd00:9:0:2::/64"]);
    },
  },
  {
    name: "replicas see each other's writes and never grant one subnet twice",
    fn: async (engine) => {
      await using o = await engine({});
      if (o.replica === undefined) return;
      const other = await o.replica();
      const results = await Promise.all(
        ["a", "b", "c", "d"].map((n, i) => register(i % 2 ? other : o.store, n)),
      );
      const subnets = results.flatMap((r) => r.subnets);
      assert.equal(new Set(subnets).size, 8, subnets.join(" "));
      await other.settle();
      await o.store.settle();
      assert.deepEqual(other.dump(), o.store.dump());
      await assert.rejects(async () => await register(other, "e"), PoolExhaustedError);
      await other.setFlag("x", "1");
      await o.store.settle();
      assert.equal(o.store.getFlag("x"), "1");
    },
  },
];

for (const [name, engine] of [["memory", memory], ["sqlite", sqlite]] as const) {
  Deno.test(`[${name}] store engine`, async (t) => {
    for (const c of CASES) await t.step(c.name, () => c.fn(engine));
  });
}

const given = (Deno.env.get("WGCNI_TEST_ETCD") ?? "").split(",").filter((e) => e);
Deno.test({
  name: "[etcd] store engine",
  ignore: given.length === 0 && !hasEtcd(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using started = given.length === 0 ? await startEtcd(1) : undefined;
    const endpoints = given.length > 0 ? given : started!.endpoints;
    const engine = etcdOn(endpoints);
    for (const c of CASES) await t.step(c.name, () => c.fn(engine));
    await t.step(
      "a prefix in the earlier layout opens; what it freed by deleting keys comes back after fresh subnets",
      async () => {
        // As earlier versions left it: node c holds index 2, a and b were
        // removed and their grace periods ended (their alloc keys deleted).
        const prefix = `/wgcni-engine-${crypto.randomUUID()}/`;
        const c = connect({ endpoints });
        const pools = normalizePools(POOLS);
        const keys: Record<string, unknown> = {
          "meta/schema": "1",
          "meta/pools": pools,
          "nodes/c": {
            name: "c",
            publicKey: "kc",
            endpoint: "192.0.2.1:51820",
            subnets: ["10.9.2.0/24", "fd00:9:0:2::/64"],
            credentialHash: "h",
            registeredAt: T0,
          },
          "leases/c": { lastSeenAt: T0 },
          "pubkeys/kc": "node/c",
          "alloc/10.9.2.0/24": { owner: "node/c" },
          "alloc/fd00:9:0:2::/64": { owner: "node/c" },
        };
        for (const [k, v] of Object.entries(keys)) {
          await c.put(prefix + k).value(typeof v === "string" ? v : JSON.stringify(v));
        }
        c.close();
        const store = await EtcdClusterStore.open({ endpoints, prefix, ...options({}) });
        try {
          assert.deepEqual(store.listNodes().map((n) => n.subnets), [[
            "10.9.2.0/24",
            "fd00:9:0:2::/64",
          ]]);
          const got = [];
          for (const n of ["d", "e", "f"]) got.push((await register(store, n)).subnets[0]);
          assert.deepEqual(got, ["10.9.3.0/24", "10.9.0.0/24", "10.9.1.0/24"]);
        } finally {
          await store.close();
          const d = connect({ endpoints });
          await d.delete().prefix(prefix);
          d.close();
        }
      },
    );
  },
});
