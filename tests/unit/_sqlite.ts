import type { DatabaseSync } from "node:sqlite";

/**
 * Runs `fn` in one `BEGIN IMMEDIATE` transaction of `db`: committed when it
 * returns, rolled back when it throws.
 */
export function inTx<T>(db: DatabaseSync, fn: () => T): T {
  db.exec("BEGIN IMMEDIATE");
  try {
    const r = fn();
    db.exec("COMMIT");
    return r;
  } catch (err) {
    db.exec("ROLLBACK");
    throw err;
  }
}
