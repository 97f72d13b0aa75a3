import assert from "node:assert/strict";
import { AddressAllocator } from "../../lib/ipam/mod.ts";
import { openDatabase, SqliteIpamStore } from "../../lib/store/sqlite_ipam.ts";
import { StoreCorruptError } from "../../lib/errors.ts";

Deno.test("SqliteIpamStore keeps identical state across close and reopen", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/ipam.db`;
    let db = openDatabase(path);
    let a = new AddressAllocator("10.44.1.0/28", new SqliteIpamStore(db, "pods"));
    const other = new AddressAllocator("fd00::/64", new SqliteIpamStore(db, "pods6"));
    for (const o of ["a", "b", "c", "d"]) a.allocate(o);
    other.allocate("a");
    a.release("b");
    a.release("a");
    const before = a.list();
    db.close();
    db = openDatabase(path);
    a = new AddressAllocator("10.44.1.0/28", new SqliteIpamStore(db, "pods"));
    assert.deepEqual(a.list(), before);
    assert.equal(
      new AddressAllocator("fd00::/64", new SqliteIpamStore(db, "pods6")).get("a"),
      "fd00::2",
    );
    assert.equal(a.allocate("e"), "10.44.1.6", "the cursor survived");
    for (let i = 0; i < 8; i++) a.allocate(`x${i}`); // .7 to .14: the fresh ones left
    assert.equal(a.allocate("y"), "10.44.1.3", "the release order survived (b first)");
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openDatabase() refuses a torn or foreign file and leaves it as it was", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.db`;
    const garbage = new Uint8Array(8192).map((_, i) => (i * 7919) % 251);
    await Deno.writeFile(path, garbage);
    assert.throws(() => openDatabase(path), StoreCorruptError);
    assert.deepEqual(await Deno.readFile(path), garbage);
    await Deno.writeTextFile(path, "SQLite format 3\0 but cut short");
    assert.throws(() => openDatabase(path), /damaged or not a wgcni database/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
