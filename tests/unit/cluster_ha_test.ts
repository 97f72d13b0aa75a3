/**
 * Several cluster managers on one real etcd cluster: a 3-member etcd on
 * loopback, 3 `wgcni cluster serve --store etcd://…` processes, concurrent
 * registrations, replica and member failures, a paused replica, and the
 * migration of an embedded store. Skipped when no `etcd` binary is present.
 */
import assert from "node:assert/strict";
import { createClusterClient } from "../../lib/api/cluster_client.ts";
import type { WatchEvent } from "../../lib/api/cluster_types.ts";
import { getLogger } from "../../lib/log.ts";
import { EtcdClusterStore } from "../../lib/store/cluster_etcd.ts";
import { normalizePools } from "../../lib/store/cluster_pools.ts";
import { readEmbeddedStore } from "../../modes/cluster/migrate.ts";
import { type EtcdCluster, hasEtcd, startEtcd } from "./_etcd.ts";
import { randomKey } from "./_cluster_fixture.ts";
import { runWgcni, type ServerProcess, startServer } from "./_cluster_process.ts";

const ADMIN = "admin-token-ha-tests-000001";
const JOIN = "join-token-ha-tests-0000001";
const POD = ["10.0.0.0/12", "fd00:10::/48"];
const CLIENT = ["100.64.0.0/24", "fd00:64::/120"];
const POOL_ARGS = ["--pod-cidr", POD.join(","), "--client-cidr", CLIENT.join(",")];
const TOKENS = ["--join-token", JOIN, "--admin-token", ADMIN];
const ignore = !hasEtcd();

function storeUrl(etcd: EtcdCluster): string {
  return "etcd://" + etcd.endpoints.map((e) => e.replace("http://", "")).join(",");
}

/** Starts `count` replicas on one etcd prefix. */
async function replicas(etcd: EtcdCluster, prefix: string, count: number) {
  const started: ServerProcess[] = [];
  for (let i = 0; i < count; i++) {
    const dir = Deno.makeTempDirSync({ prefix: "wgcni-ha-replica-" });
    started.push(
      await startServer(dir, [
        "--listen",
        "127.0.0.1:0",
        "--store",
        storeUrl(etcd),
        "--etcd-prefix",
        prefix,
        ...POOL_ARGS,
        ...TOKENS,
        "--keepalive",
        "1s",
      ]),
    );
  }
  return {
    list: started,
    async [Symbol.asyncDispose]() {
      for (const s of started) {
        await s.stop("SIGKILL");
        Deno.removeSync(s.dataDir, { recursive: true });
      }
    },
  };
}

async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function register(url: string, name: string) {
  const c = createClusterClient(url, { token: JOIN, timeoutMs: 60_000 });
  return c.register({ name, publicKey: randomKey(), endpoint: "192.0.2.1:51820" })
    .finally(() => c.close());
}

async function nodesAt(url: string) {
  const c = createClusterClient(url, { token: ADMIN });
  try {
    return await c.nodes();
  } finally {
    c.close();
  }
}

async function conflictsAt(url: string): Promise<number> {
  const c = createClusterClient(url, { token: ADMIN });
  try {
    const m = (await c.metrics()).match(/^wgcni_cluster_store_conflicts_total (\d+)/m);
    assert.ok(m, "the conflicts metric is exported");
    return Number(m[1]);
  } finally {
    c.close();
  }
}

/** Every subnet of every node once, each family's subnets disjoint. */
function assertDisjoint(nodes: readonly { name: string; subnets: readonly string[] }[]) {
  const owner = new Map<string, string>();
  for (const n of nodes) {
    assert.equal(n.subnets.length, 2, `${n.name} has one subnet per family`);
    for (const s of n.subnets) {
      assert.equal(owner.get(s), undefined, `${s} granted to ${owner.get(s)} and ${n.name}`);
      owner.set(s, n.name);
    }
  }
  // One prefix length per family, so distinct networks never overlap; check it.
  const masks = new Set([...owner.keys()].map((s) => `${s.includes(":")}/${s.split("/")[1]}`));
  assert.equal(masks.size, 2, `one prefix length per family: ${[...masks]}`);
}

Deno.test({
  name: "3 replicas on a 3-member etcd: concurrent registrations, failures, a paused replica",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await using etcd = await startEtcd(3);
    const prefix = `/wgcni-ha-${Deno.pid}/`;
    await using rs = await replicas(etcd, prefix, 3);
    const urls = rs.list.map((s) => s.url);

    await t.step("300 registrations spread over 3 replicas at once", async () => {
      const results = await Promise.all(
        Array.from({ length: 300 }, (_, i) => register(urls[i % 3]!, `n${i}`)),
      );
      assert.equal(results.length, 300);
      assertDisjoint(results.map((r) => r.node));
      for (const url of urls) {
        await eventually(`300 nodes at ${url}`, async () => (await nodesAt(url)).length === 300);
        const nodes = await nodesAt(url);
        assertDisjoint(nodes);
        const byName = new Map(results.map((r) => [r.node.name, r.node.subnets]));
        for (const n of nodes) assert.deepEqual(n.subnets, byName.get(n.name), n.name);
      }
      const conflicts = (await Promise.all(urls.map(conflictsAt))).reduce((a, b) => a + b, 0);
      assert.ok(conflicts > 0, "the replicas raced for subnets and the losers retried");
    });

    await t.step(
      "a watch resumes by revision on another replica when its replica dies",
      async () => {
        const stop = new AbortController();
        const a = createClusterClient(urls[0]!, { token: ADMIN });
        const it = a.watch(undefined, stop.signal);
        const first = (await it.next()).value as WatchEvent;
        assert.equal(first.type, "snapshot");
        await register(urls[1]!, "before-kill");
        const seen = (await it.next()).value as WatchEvent;
        assert.equal(seen.type, "upsert");
        const since = seen.revision;
        await rs.list[0]!.stop("SIGKILL");
        await assert.rejects(async () => {
          while (!(await it.next()).done) { /* the stream fails with its replica */ }
          throw new Error("ended");
        });
        a.close();
        await register(urls[2]!, "after-kill");
        const b = createClusterClient(urls[1]!, { token: ADMIN });
        const resumed = b.watch(since, stop.signal);
        const next = (await resumed.next()).value as WatchEvent;
        assert.equal(next.type, "upsert", "a delta, not a snapshot");
        if (next.type === "upsert") assert.equal(next.peer.name, "after-kill");
        assert.ok(next.revision > since);
        stop.abort();
        b.close();
      },
    );

    await t.step("one etcd member killed: registrations and reads go on", async () => {
      await etcd.kill(0);
      const got = await Promise.all(
        Array.from({ length: 20 }, (_, i) => register(urls[1 + (i % 2)]!, `m${i}`)),
      );
      assert.equal(got.length, 20);
      for (const url of urls.slice(1)) {
        await eventually(`322 nodes at ${url}`, async () => (await nodesAt(url)).length === 322);
        assertDisjoint(await nodesAt(url));
      }
      await etcd.restart(0);
    });

    await t.step("a replica paused past its timeouts, then resumed: no double grant", async () => {
      const paused = rs.list[2]!;
      // Requests wait at the paused replica while the live one grants the
      // subnets its stale view still shows as free.
      Deno.kill(paused.pid, "SIGSTOP");
      let atPaused: Promise<unknown>[] = [];
      try {
        atPaused = Array.from({ length: 10 }, (_, i) => register(paused.url, `p${i}`));
        const atLive = await Promise.all(
          Array.from({ length: 30 }, (_, i) => register(urls[1]!, `l${i}`)),
        );
        assert.equal(atLive.length, 30);
        await new Promise((r) => setTimeout(r, 6_000));
      } finally {
        Deno.kill(paused.pid, "SIGCONT");
      }
      assert.equal((await Promise.all(atPaused)).length, 10);
      for (const url of urls.slice(1)) {
        await eventually(`362 nodes at ${url}`, async () => (await nodesAt(url)).length === 362);
        assertDisjoint(await nodesAt(url));
      }
      assert.deepEqual(
        (await nodesAt(paused.url)).map((n) => [n.name, n.subnets]).sort(),
        (await nodesAt(urls[1]!)).map((n) => [n.name, n.subnets]).sort(),
      );
    });

    await t.step("etcd quorum lost: reads go on, writes answer 503, readyz fails", async () => {
      await etcd.kill(1);
      await etcd.kill(2);
      const url = urls[1]!;
      assert.equal((await nodesAt(url)).length, 362, "the manager's copy still answers");
      const c = createClusterClient(url, { token: ADMIN });
      try {
        assert.equal(await c.ready(), false);
        const res = await fetch(`${url}/v1/nodes`, {
          method: "POST",
          headers: { authorization: `Bearer ${JOIN}`, "content-type": "application/json" },
          body: JSON.stringify({
            name: "no-quorum",
            publicKey: randomKey(),
            endpoint: "192.0.2.9:51820",
          }),
          signal: AbortSignal.timeout(60_000),
        });
        assert.equal(res.status, 503);
        assert.match((await res.json()).error, /Cannot register node no-quorum: etcd/);
      } finally {
        c.close();
      }
      await etcd.restart(1);
      await eventually("writes after quorum returned", async () => {
        try {
          await register(url, "quorum-back");
          return true;
        } catch {
          return false;
        }
      }, 30_000);
    });
  },
});

Deno.test({
  name: "migrate moves an embedded store into etcd whole and refuses a non-empty target",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using etcd = await startEtcd(1);
    const dir = Deno.makeTempDirSync({ prefix: "wgcni-ha-migrate-" });
    try {
      // An embedded store with nodes, a client, tokens and a subnet in its grace period.
      const server = await startServer(dir, ["--listen", "127.0.0.1:0", ...POOL_ARGS, ...TOKENS]);
      const admin = createClusterClient(server.url, { token: ADMIN });
      const regs = [];
      for (const n of ["a", "b", "c"]) regs.push(await register(server.url, n));
      await admin.removeNode("c");
      await admin.addClient({ name: "laptop", publicKey: randomKey() });
      const extra = await admin.createToken({ ttlSeconds: 3600, singleUse: true });
      admin.close();
      await server.stop();

      const logger = getLogger("test");
      const source = readEmbeddedStore(dir, logger);
      assert.equal(source.nodes.length, 2);
      assert.equal(source.quarantine.length, 2);
      const to = storeUrl(etcd);
      const prefix = "/migrated/";
      const r = await runWgcni(["cluster", "migrate", "--from", dir, "--to", to, ...[
        "--etcd-prefix",
        prefix,
      ]]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^migrated 2 nodes, 1 clients, 3 tokens and 2 subnets/m);
      assert.doesNotMatch(r.stdout + r.stderr, new RegExp(`${ADMIN}|${JOIN}|${extra.token}`));

      const target = await EtcdClusterStore.open({
        endpoints: [...etcd.endpoints],
        prefix,
        pools: normalizePools({
          podCidrs: POD,
          clientCidrs: CLIENT,
          nodeMaskV4: 24,
          nodeMaskV6: 64,
        }),
        graceMs: 3_600_000,
        logger,
      });
      try {
        assert.deepEqual(target.dump(), source);
      } finally {
        await target.close();
      }

      const again = await runWgcni(["cluster", "migrate", "--from", dir, "--to", to, ...[
        "--etcd-prefix",
        prefix,
      ]]);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /holds \d+ keys already; the target must be empty/);

      // A replica on the migrated prefix knows the nodes, their credentials and the tokens.
      const dir2 = Deno.makeTempDirSync({ prefix: "wgcni-ha-migrated-" });
      try {
        await using replica = await startServer(dir2, [
          "--listen",
          "127.0.0.1:0",
          "--store",
          to,
          "--etcd-prefix",
          prefix,
          ...POOL_ARGS,
          ...TOKENS,
        ]);
        const node = createClusterClient(replica.url, { token: regs[0]!.credential });
        assert.equal((await node.heartbeat("a")).name, "a");
        node.close();
        const nodes = await nodesAt(replica.url);
        assert.deepEqual(
          nodes.map((n) => [n.name, n.subnets]),
          regs.slice(0, 2).map((x) => [x.node.name, x.node.subnets]),
        );
        const viaExtra = createClusterClient(replica.url, { token: extra.token });
        const d = await viaExtra.register({
          name: "d",
          publicKey: randomKey(),
          endpoint: "192.0.2.4:51820",
        });
        viaExtra.close();
        // c's subnets wait out their grace period: d gets others.
        for (const s of d.node.subnets) {
          assert.ok(!regs[2]!.node.subnets.includes(s), `${s} was c's and is in its grace period`);
        }
      } finally {
        Deno.removeSync(dir2, { recursive: true });
      }
      // The source is left as it was.
      assert.deepEqual(readEmbeddedStore(dir, logger), source);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
