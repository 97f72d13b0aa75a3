/** Allocator behaviour, the same for every store (in memory and durable SQLite). */
import assert from "node:assert/strict";
import fc from "fast-check";
import { DatabaseSync } from "node:sqlite";
import {
  AddressAllocator,
  contains,
  IpamDraft,
  type IpamStore,
  MemoryIpamStore,
  parseAddress,
  parseCidr,
  SubnetPool,
} from "../../lib/ipam/mod.ts";
import { SqliteIpamStore } from "../../lib/store/sqlite_ipam.ts";
import { ConflictError, PoolExhaustedError } from "../../lib/errors.ts";

const STORES: [string, () => IpamStore][] = [
  ["memory", () => new MemoryIpamStore()],
  ["sqlite", () => new SqliteIpamStore(new DatabaseSync(":memory:"), "test")],
  // A draft planned over a store it does not change allocates as the store itself would.
  ["draft", () => new IpamDraft(new MemoryIpamStore())],
];

type Op = { kind: "alloc" | "release"; owner: number };
const ops = (owners: number) =>
  fc.array(
    fc.record({
      kind: fc.constantFrom("alloc" as const, "release" as const),
      owner: fc.nat(owners - 1),
    }),
    { maxLength: 120 },
  );

for (const [storeName, newStore] of STORES) {
  for (const subnet of ["10.44.1.0/27", "fd00:10:244:1::/122"]) {
    Deno.test(`[${storeName}] AddressAllocator in ${subnet}: no duplicate, inside, reserved skipped, idempotent`, () => {
      fc.assert(
        fc.property(ops(40), (seq: Op[]) => {
          const a = new AddressAllocator(subnet, newStore());
          const cidr = parseCidr(subnet);
          const held = new Map<string, string>();
          for (const op of seq) {
            const owner = `o${op.owner}`;
            if (op.kind === "alloc") {
              let got: string;
              try {
                got = a.allocate(owner);
              } catch (err) {
                assert.ok(err instanceof PoolExhaustedError);
                assert.match(err.message, /^Cannot allocate from .*: pool is exhausted$/);
                assert.equal(a.free(), 0n);
                continue;
              }
              if (held.has(owner)) assert.equal(got, held.get(owner), "idempotent per owner");
              held.set(owner, got);
              const v = parseAddress(got);
              assert.ok(contains(cidr, v), "inside the subnet");
              const index = v.value - cidr.base;
              assert.notEqual(index, 0n, "network address");
              assert.notEqual(index, 1n, "gateway");
              if (cidr.family === 4) assert.notEqual(index, 31n, "broadcast");
            } else {
              assert.equal(a.release(owner), held.delete(owner));
            }
            const addrs = [...held.values()];
            assert.equal(new Set(addrs).size, addrs.length, "no duplicates");
            assert.equal(a.used(), BigInt(held.size));
            for (const [o, addr] of held) {
              assert.equal(a.get(o), addr);
              assert.equal(a.ownerOf(addr), o);
            }
          }
        }),
        { numRuns: 60 },
      );
    });
  }

  Deno.test(`[${storeName}] released addresses are reused last, longest idle first`, () => {
    const a = new AddressAllocator("10.44.1.0/29", newStore()); // hosts .2-.6 usable
    const got = ["a", "b", "c"].map((o) => a.allocate(o));
    assert.deepEqual(got, ["10.44.1.2", "10.44.1.3", "10.44.1.4"]);
    a.release("b");
    a.release("a");
    assert.equal(a.allocate("d"), "10.44.1.5", "fresh addresses before released ones");
    assert.equal(a.allocate("e"), "10.44.1.6");
    assert.equal(a.allocate("f"), "10.44.1.3", "then the longest idle (b's)");
    assert.equal(a.allocate("g"), "10.44.1.2");
    assert.throws(() => a.allocate("h"), PoolExhaustedError);
    assert.equal(a.release("nobody"), false);
  });

  Deno.test(`[${storeName}] a /64 allocates without scanning`, () => {
    const a = new AddressAllocator("fd00:10:244:7::/64", newStore());
    assert.equal(a.allocate("x"), "fd00:10:244:7::2");
    assert.equal(a.free(), 2n ** 64n - 3n);
  });

  Deno.test(`[${storeName}] SubnetPool carves disjoint subnets inside the pool, per family`, () => {
    fc.assert(
      fc.property(ops(20), (seq: Op[]) => {
        for (const [poolText, mask] of [["10.244.0.0/20", 24], ["fd00:10:244::/60", 64]] as const) {
          const pool = new SubnetPool(poolText, mask, newStore());
          const cidr = parseCidr(poolText);
          const held = new Map<string, string>();
          for (const op of seq) {
            const owner = `n${op.owner}`;
            if (op.kind === "release") {
              pool.release(owner);
              held.delete(owner);
              continue;
            }
            try {
              const s = pool.allocate(owner);
              if (held.has(owner)) assert.equal(s, held.get(owner));
              held.set(owner, s);
              const c = parseCidr(s);
              assert.equal(c.prefix, mask);
              assert.ok(contains(cidr, c));
            } catch (err) {
              assert.ok(err instanceof PoolExhaustedError);
              assert.equal(held.size, 16);
            }
          }
          assert.equal(new Set(held.values()).size, held.size);
        }
      }),
      { numRuns: 40 },
    );
  });
}

Deno.test("SubnetPool refuses a mask outside the pool", () => {
  assert.throws(
    () => new SubnetPool("10.244.0.0/16", 8, new MemoryIpamStore()),
    /Cannot carve \/8/,
  );
  assert.throws(() => new SubnetPool("10.244.0.0/16", 33, new MemoryIpamStore()), RangeError);
});

for (const [store, make] of STORES) {
  Deno.test(`claim() binds exactly the address given, which allocate() then skips (${store})`, () => {
    claimCase(new AddressAllocator("10.44.1.0/29", make()));
  });
}

function claimCase(a: AddressAllocator) {
  a.allocate("first"); // .2
  a.claim("kernel:x", "10.44.1.4");
  a.claim("kernel:x", "10.44.1.4"); // again: no-op
  assert.equal(a.ownerOf("10.44.1.4"), "kernel:x");
  assert.deepEqual([a.allocate("b"), a.allocate("c"), a.allocate("d")], [
    "10.44.1.3",
    "10.44.1.5",
    "10.44.1.6",
  ]);
  assert.throws(() => a.allocate("e"), PoolExhaustedError);
  assert.throws(() => a.claim("y", "10.44.1.4"), ConflictError, "held by another owner");
  assert.throws(() => a.claim("kernel:x", "10.44.1.2"), ConflictError, "the owner holds another");
  for (const reserved of ["10.44.1.0", "10.44.1.1", "10.44.1.7", "10.44.2.1"]) {
    assert.throws(() => a.claim("z", reserved), RangeError, reserved);
  }
  // A released index claimed back leaves the release queue.
  a.release("c");
  a.claim("again", "10.44.1.5");
  a.release("b");
  assert.equal(a.allocate("f"), "10.44.1.3", "not .5, which is held");
}
