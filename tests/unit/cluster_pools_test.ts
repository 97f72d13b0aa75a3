/**
 * The cluster's pools over lib/ipam in a real SQLite database: the order
 * subnets and addresses come in, releases by value, what survives a reopen,
 * and the settings checks in front of them.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { PoolExhaustedError } from "../../lib/errors.ts";
import { ClusterPools, normalizePools } from "../../lib/store/cluster_pools.ts";
import type { PoolConfig } from "../../lib/store/cluster_store.ts";
import { SqliteIpamStore } from "../../lib/store/sqlite_ipam.ts";
import { inTx } from "./_sqlite.ts";

const POOLS: PoolConfig = {
  podCidrs: ["10.9.0.0/22", "fd00:9::/62"],
  clientCidrs: ["100.64.0.0/30", "fd00:64::/126"],
  nodeMaskV4: 24,
  nodeMaskV6: 64,
};

/** The pools over lib/ipam's SQLite tables in `db` (created on first use: call it in a transaction). */
function openClusterPools(db: DatabaseSync, config: PoolConfig): ClusterPools {
  return new ClusterPools(config, (ns) => new SqliteIpamStore(db, ns));
}

Deno.test("node subnets come fresh first, then the longest released, then the pool is exhausted", () => {
  const db = new DatabaseSync(":memory:");
  const pools = inTx(db, () => openClusterPools(db, POOLS));
  const got = [0, 1, 2].map(() => pools.allocateSubnet(4));
  assert.deepEqual(got, ["10.9.0.0/24", "10.9.1.0/24", "10.9.2.0/24"]);
  pools.releaseSubnet("10.9.1.0/24");
  pools.releaseSubnet("10.9.0.0/24");
  assert.equal(pools.allocateSubnet(4), "10.9.3.0/24", "a never-used subnet before a released one");
  assert.equal(pools.allocateSubnet(4), "10.9.1.0/24", "the longest released first");
  assert.equal(pools.allocateSubnet(4), "10.9.0.0/24");
  assert.throws(
    () => pools.allocateSubnet(4),
    (err: Error) => err instanceof PoolExhaustedError && /10\.9\.0\.0\/22/.test(err.message),
  );
  assert.equal(pools.allocateSubnet(6), "fd00:9::/64");
  db.close();
});

Deno.test("releasing a subnet or address that is not handed out changes nothing", () => {
  const db = new DatabaseSync(":memory:");
  const pools = inTx(db, () => openClusterPools(db, POOLS));
  const a = pools.allocateSubnet(4);
  const before = pools.usage();
  for (
    const text of ["10.9.3.0/24", "10.9.0.0/25", "10.99.0.0/24", "not a cidr", "100.64.0.2/32"]
  ) {
    pools.releaseSubnet(text);
    pools.releaseClient(text);
  }
  assert.deepEqual(pools.usage(), before);
  assert.ok(pools.isAllocated(a));
  assert.ok(!pools.isAllocated("10.9.1.0/24"));
  db.close();
});

Deno.test("client addresses skip the network and IPv4 broadcast addresses and come back by value", () => {
  const db = new DatabaseSync(":memory:");
  const pools = inTx(db, () => openClusterPools(db, POOLS));
  assert.deepEqual([pools.allocateClient(4), pools.allocateClient(4)], [
    "100.64.0.1/32",
    "100.64.0.2/32",
  ]);
  assert.throws(() => pools.allocateClient(4), PoolExhaustedError);
  assert.deepEqual([1, 2, 3].map(() => pools.allocateClient(6)), [
    "fd00:64::1/128",
    "fd00:64::2/128",
    "fd00:64::3/128",
  ]);
  assert.ok(pools.isAllocated("100.64.0.2/32"));
  pools.releaseClient("100.64.0.2/32");
  assert.ok(!pools.isAllocated("100.64.0.2/32"));
  assert.equal(pools.allocateClient(4), "100.64.0.2/32");
  const usage = pools.usage().filter((u) => u.pool === "client");
  assert.deepEqual(usage.map((u) => [u.cidr, u.used, u.total]), [
    ["100.64.0.0/30", 2, 2],
    ["fd00:64::/126", 3, 3],
  ]);
  db.close();
});

Deno.test("pool state survives reopening the database, and a rolled-back allocation leaves none", () => {
  const path = Deno.makeTempFileSync({ prefix: "wgcni-pools-", suffix: ".db" });
  try {
    let db = new DatabaseSync(path);
    let pools = inTx(db, () => openClusterPools(db, POOLS));
    const a = inTx(db, () => pools.allocateSubnet(4));
    assert.throws(() =>
      inTx(db, () => {
        pools.allocateSubnet(4);
        throw new Error("the row that would hold it was refused");
      })
    );
    db.close();
    db = new DatabaseSync(path);
    pools = inTx(db, () => openClusterPools(db, POOLS));
    assert.ok(pools.isAllocated(a));
    assert.equal(pools.allocateSubnet(4), "10.9.1.0/24", "the rolled-back subnet was never taken");
    db.close();
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("poolContaining() names the pool of an address, IPv4-mapped IPv6 included", () => {
  const db = new DatabaseSync(":memory:");
  const pools = inTx(db, () => openClusterPools(db, POOLS));
  const cases: [string, string | undefined][] = [
    ["10.9.3.7", "10.9.0.0/22"],
    ["::ffff:10.9.0.1", "10.9.0.0/22"],
    ["fd00:9::1", "fd00:9::/62"],
    ["100.64.0.3", "100.64.0.0/30"],
    ["192.0.2.1", undefined],
    ["not an address", undefined],
  ];
  for (const [address, pool] of cases) assert.equal(pools.poolContaining(address), pool, address);
  db.close();
});

Deno.test("pool settings that are not networks are refused with what was meant", () => {
  const base = { ...POOLS, clientCidrs: [] };
  const cases: [string[], RegExp][] = [
    [["10.1.0.0/33"], /--pod-cidr 10\.1\.0\.0\/33: it is not a CIDR/],
    [["10.1.0.0"], /it is not a CIDR/],
    [["bogus/8"], /it is not a CIDR/],
    [["10.1.2.0/16"], /bits set after the prefix \(did you mean 10\.1\.0\.0\/16\?\)/],
    [["fd00:1:2::1/48"], /did you mean fd00:1:2::\/48\?/],
    [["10.1.0.0/16", "10.2.0.0/16"], /at most one per family/],
  ];
  for (const [podCidrs, re] of cases) {
    assert.throws(() => normalizePools({ ...base, podCidrs }), RangeError);
    assert.throws(() => normalizePools({ ...base, podCidrs }), re, podCidrs.join());
  }
  assert.throws(
    () => normalizePools({ ...POOLS, clientCidrs: ["100.64.0.1/24"] }),
    /--client-cidr 100\.64\.0\.1\/24: .*did you mean 100\.64\.0\.0\/24/,
  );
});

Deno.test("pools that overlap loopback, link-local, unspecified or multicast ranges are refused", () => {
  const base = { ...POOLS, clientCidrs: [] };
  for (
    const [podCidrs, re] of [
      [["0.0.0.0/0"], /overlaps the unspecified \("this network"\) range 0\.0\.0\.0\/8/],
      [["127.0.0.0/16"], /overlaps the loopback range 127\.0\.0\.0\/8/],
      [["224.0.0.0/16"], /overlaps the multicast range 224\.0\.0\.0\/4/],
      [["169.254.0.0/16"], /link-local/],
      [["10.244.0.0/16", "::/0"], /overlaps the unspecified address ::\/128/],
      [["10.244.0.0/16", "fe80::/56"], /link-local range fe80::\/10/],
      [["10.244.0.0/16", "ff00::/56"], /multicast range ff00::\/8/],
    ] as const
  ) {
    assert.throws(() => normalizePools({ ...base, podCidrs }), re, podCidrs.join());
  }
  assert.throws(
    () => normalizePools({ ...POOLS, clientCidrs: ["127.1.0.0/24"] }),
    /Cannot use pool 127\.1\.0\.0\/24: it overlaps the loopback range/,
  );
});
