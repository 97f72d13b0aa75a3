/**
 * IpamDraft: allocations planned over a store they do not change, committed
 * later with applyIpamChanges. The base stays as it was until then, and
 * applying the changes leaves it exactly as the draft showed it.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { DatabaseSync } from "node:sqlite";
import {
  AddressAllocator,
  applyIpamChanges,
  IpamDraft,
  type IpamStore,
  MemoryIpamStore,
  noIpamChanges,
} from "../../lib/ipam/mod.ts";
import { SqliteIpamStore } from "../../lib/store/sqlite_ipam.ts";

type Op = { kind: "alloc" | "release"; owner: number };
const ops = fc.array(
  fc.record({ kind: fc.constantFrom("alloc" as const, "release" as const), owner: fc.nat(11) }),
  { maxLength: 40 },
);

/** Everything an allocator's future depends on. */
function stateOf(s: IpamStore) {
  return {
    bindings: s.list().sort((a, b) => (a.index < b.index ? -1 : 1)),
    released: [...s.released()],
    cursor: s.cursor(),
    count: s.count(),
  };
}

function run(a: AddressAllocator, seq: Op[]): void {
  for (const op of seq) {
    try {
      if (op.kind === "alloc") a.allocate(`o${op.owner}`);
      else a.release(`o${op.owner}`);
    } catch {
      // exhausted: nothing changes
    }
  }
}

const BASES: [string, () => IpamStore][] = [
  ["memory", () => new MemoryIpamStore()],
  ["sqlite", () => new SqliteIpamStore(new DatabaseSync(":memory:"), "t")],
];

for (const [name, make] of BASES) {
  Deno.test(`[${name}] applying a draft's changes leaves the base as the draft showed it, and the base unchanged before`, () => {
    fc.assert(
      fc.property(ops, ops, (before: Op[], planned: Op[]) => {
        const base = make();
        run(new AddressAllocator("10.1.0.0/28", base), before);
        const untouched = stateOf(base);
        const draft = new IpamDraft(base);
        run(new AddressAllocator("10.1.0.0/28", draft), planned);
        assert.deepEqual(stateOf(base), untouched, "planning changes nothing");
        const shown = stateOf(draft);
        applyIpamChanges(base, draft.changes());
        assert.deepEqual(stateOf(base), shown);
      }),
      { numRuns: 150 },
    );
  });
}

Deno.test("a draft that only reads has no changes", () => {
  const base = new MemoryIpamStore();
  new AddressAllocator("10.1.0.0/28", base).allocate("a");
  const draft = new IpamDraft(base);
  const a = new AddressAllocator("10.1.0.0/28", draft);
  assert.equal(a.allocate("a"), "10.1.0.2", "an owner's address is found, not allocated again");
  assert.equal(a.used(), 1n);
  assert.ok(noIpamChanges(draft.changes()));
});

Deno.test("a draft takes released addresses from the base, longest idle first, after fresh ones", () => {
  const base = new MemoryIpamStore();
  const b = new AddressAllocator("10.1.0.0/29", base); // .2 to .6
  for (const o of ["a", "b", "c"]) b.allocate(o);
  b.release("b");
  b.release("a");
  const a = new AddressAllocator("10.1.0.0/29", new IpamDraft(base));
  assert.deepEqual(["d", "e", "f", "g"].map((o) => a.allocate(o)), [
    "10.1.0.5",
    "10.1.0.6",
    "10.1.0.3",
    "10.1.0.2",
  ]);
});
