import assert from "node:assert/strict";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import { ClusterMemory, ClusterMismatchError } from "../../modes/node/cluster_memory.ts";

function withStore(fn: (open: () => NodeStateStore) => void) {
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-memory-" });
  const dbs: { close(): void }[] = [];
  try {
    fn(() => {
      const db = openDatabase(`${dir}/node.db`);
      dbs.push(db);
      return new NodeStateStore(db);
    });
  } finally {
    for (const db of dbs) db.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("a node remembers its cluster's id and refuses a manager answering for another", () => {
  withStore((open) => {
    const m = new ClusterMemory(open(), undefined);
    m.accept("", "https://m1:7443");
    assert.equal(m.id, undefined, "an empty id (an older manager) teaches nothing");
    m.accept("c-1", "https://m1:7443");
    assert.equal(m.id, "c-1");
    m.accept("c-1", "https://m2:7443");
    assert.throws(
      () => m.accept("c-2", "https://m1:7443"),
      (e: Error) =>
        e instanceof ClusterMismatchError &&
        /answers for cluster c-2, but this node belongs to cluster c-1/.test(e.message) &&
        /wgcni node leave --force/.test(e.message),
    );
    assert.throws(() => new ClusterMemory(open(), "c-1").accept("c-9", "u"), ClusterMismatchError);
  });
});

Deno.test("a snapshot behind the revision a node applied is refused, across restarts", () => {
  withStore((open) => {
    const m = new ClusterMemory(open(), "c-1");
    m.checkSnapshot(0, "u");
    m.applied(40);
    m.applied(12);
    assert.equal(m.revision, 40, "revisions only go forward");
    m.checkSnapshot(40, "u");
    m.checkSnapshot(41, "u");
    assert.throws(
      () => m.checkSnapshot(39, "https://m1:7443"),
      /snapshot is at revision 39, behind revision 40 that this node already applied/,
    );
    m.flush();
    // After a restart of the node manager, from its state store.
    const again = new ClusterMemory(open(), "c-1");
    assert.equal(again.revision, 40);
    assert.throws(() => again.checkSnapshot(3, "u"), ClusterMismatchError);
  });
});
