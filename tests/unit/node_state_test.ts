import assert from "node:assert/strict";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore, type PodRecord } from "../../lib/store/node_state.ts";
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
