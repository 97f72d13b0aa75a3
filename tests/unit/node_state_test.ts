import assert from "node:assert/strict";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { DatabaseSync } from "node:sqlite";
import { NodeStateStore, type PodRecord, type WorkloadRecord } from "../../lib/store/node_state.ts";
import { NoSpaceError } from "../../lib/errors.ts";

const pod = (i: number): PodRecord => ({
  containerId: `c${i}`,
  ifname: "eth0",
  netns: `/run/netns/p${i}`,
  phase: "ready",
  wgName: `wgp${i}`,
  publicKey: "x".repeat(2000),
  addresses: [`10.244.0.${i + 2}`],
  listenPort: 40000 + i,
  createdAt: i,
});

Deno.test("a full database is a NoSpaceError naming the state directory, and nothing of the transaction lands", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const db = openDatabase(`${dir}/node.db`);
    const store = new NodeStateStore(db);
    store.put(pod(0));
    // The same SQLITE_FULL a full file system gives, at a page limit.
    const pages = (db.prepare("PRAGMA page_count").get() as { page_count: number }).page_count;
    db.exec(`PRAGMA max_page_count = ${pages}`);
    let caught: unknown;
    try {
      store.transaction(() => {
        for (let i = 1; i < 50; i++) store.put(pod(i));
      });
    } catch (err) {
      caught = err;
    }
    assert.ok(caught instanceof NoSpaceError, String(caught));
    assert.match(caught.message, new RegExp(`^no space left on the state directory ${dir} `));
    assert.equal(db.isTransaction, false);
    assert.deepEqual(store.all().map((p) => p.containerId), ["c0"]);
    assert.throws(() => {
      for (let i = 1; i < 50; i++) store.put(pod(i));
    }, NoSpaceError);
    db.exec("PRAGMA max_page_count = 1073741823");
    store.transaction(() => store.put(pod(1)));
    assert.equal(store.all().length >= 2, true);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a schema-2 node state gains the workloads table and keeps its pods", () => {
  const db = new DatabaseSync(":memory:");
  new NodeStateStore(db).put(pod(0));
  // As schema 2 left it: no workloads table, no pod key rotation.
  db.exec("DROP TABLE workloads");
  db.exec("ALTER TABLE pods DROP COLUMN next_key");
  db.exec("ALTER TABLE pods DROP COLUMN keyed_at");
  db.exec("UPDATE node_schema SET version = 2");
  const store = new NodeStateStore(db);
  assert.equal(
    (db.prepare("SELECT version FROM node_schema").get() as { version: number }).version,
    4,
  );
  assert.deepEqual(store.all().map((p) => p.containerId), ["c0"]);
  assert.equal(store.all()[0]?.nextPublicKey, undefined);
  store.put({ ...pod(0), nextPublicKey: "K9", keyedAt: 7 });
  assert.deepEqual([store.all()[0]?.nextPublicKey, store.all()[0]?.keyedAt], ["K9", 7]);
  const w: WorkloadRecord = {
    name: "vm-1",
    phase: "ready",
    addresses: ["10.244.0.9", "fd00::9"],
    publicKey: "K1",
    endpointPort: 40001,
    createdAt: 5,
  };
  store.putWorkload(w);
  store.putWorkload({ name: "vm-2", phase: "allocated", addresses: ["10.244.0.10"], createdAt: 6 });
  assert.deepEqual(store.workload("vm-1"), w);
  assert.deepEqual(store.workloads().map((x) => x.name), ["vm-1", "vm-2"]);
  assert.equal(store.workload("vm-2")?.publicKey, undefined);
  // One key, one workload.
  assert.throws(() => store.putWorkload({ ...w, name: "vm-3" }), /UNIQUE/);
  store.deleteWorkload("vm-1");
  assert.equal(store.workload("vm-1"), undefined);
  // A newer schema is refused, not guessed at.
  db.exec("UPDATE node_schema SET version = 5");
  assert.throws(() => new NodeStateStore(db), /schema version 5, this wgcni knows 4/);
});
