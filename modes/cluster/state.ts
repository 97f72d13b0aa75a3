/**
 * The cluster manager's data directory: the SQLite store, the marker that
 * says a store was created here, and the plain copies of generated tokens.
 * A directory that once held a store but lost it (or holds another cluster's
 * store) is refused: starting empty would hand out subnets already in use.
 */
import { existsSync, writeSecretFileSync } from "../../lib/fs.ts";
import { join } from "node:path";
import type { Logger } from "../../lib/log.ts";
import { StoreCorruptError } from "../../lib/errors.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { SqliteClusterStore } from "../../lib/store/cluster_sqlite.ts";
import type { PoolConfig } from "../../lib/store/cluster_store.ts";
import { newSecret } from "../../lib/store/cluster_store.ts";

/** File names inside the data directory. */
export const DATA_FILES = {
  database: "cluster.db",
  marker: "cluster.id",
  revision: "cluster.revision",
  joinToken: "join-token",
  adminToken: "admin-token",
} as const;

export { writeSecretFileSync as writeSecretFile };

/** The highest revision the store of `dataDir` has served, as last recorded. */
export function readRevisionMark(dataDir: string): number | undefined {
  try {
    const n = Number(Deno.readTextFileSync(join(dataDir, DATA_FILES.revision)).trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/**
 * Records the revision served (outside the database, so a database that
 * loses commits is noticed at the next start). Atomic; no fsync needed: it
 * only has to survive what the database does not.
 */
export function writeRevisionMark(dataDir: string, revision: number): void {
  writeSecretFileSync(join(dataDir, DATA_FILES.revision), `${revision}\n`);
}

/**
 * Opens the store in `dataDir`, creating directory, database and marker on
 * first start. Throws StoreCorruptError for a lost, foreign, damaged or busy
 * store.
 */
export function openClusterState(
  dataDir: string,
  options: {
    pools: PoolConfig;
    graceMs: number;
    logger: Logger;
    historyLimit?: number;
    groupCommit?: boolean;
    /**
     * The store was restored from a backup on purpose: instead of refusing a
     * store behind the revision this directory served, move past it (every
     * node then resyncs from a snapshot).
     */
    restored?: boolean;
  },
): SqliteClusterStore {
  Deno.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const dbPath = join(dataDir, DATA_FILES.database);
  const markerPath = join(dataDir, DATA_FILES.marker);
  const hadDb = existsSync(dbPath);
  const marker = existsSync(markerPath) ? Deno.readTextFileSync(markerPath).trim() : undefined;
  if (!hadDb && marker !== undefined) {
    throw new StoreCorruptError(
      `Cannot start: ${dbPath} is missing but ${dataDir} held cluster ${marker}; restore the file from a backup, or empty ${dataDir} to create a new cluster`,
    );
  }
  if (!hadDb && (existsSync(`${dbPath}-wal`) || existsSync(join(dataDir, DATA_FILES.adminToken)))) {
    throw new StoreCorruptError(
      `Cannot start: ${dbPath} is missing but ${dataDir} holds files of an earlier store; restore it, or empty ${dataDir} to create a new cluster`,
    );
  }
  if (
    hadDb && marker !== undefined && Deno.statSync(dbPath).size === 0 &&
    !existsSync(`${dbPath}-wal`)
  ) {
    throw emptied(dbPath, markerPath, dataDir, marker);
  }
  let db;
  try {
    db = openDatabase(dbPath);
    // One manager per store: the lock is held from the first transaction until exit.
    db.exec("PRAGMA locking_mode = EXCLUSIVE");
    // Hashes only, but still nobody else's business.
    Deno.chmodSync(dbPath, 0o600);
  } catch (err) {
    throw openFailure(err, dbPath, dataDir);
  }
  try {
    const store = SqliteClusterStore.open(db, {
      pools: options.pools,
      graceMs: options.graceMs,
      logger: options.logger,
      ...(options.historyLimit !== undefined ? { historyLimit: options.historyLimit } : {}),
      ...(options.groupCommit !== undefined ? { groupCommit: options.groupCommit } : {}),
    });
    const id = store.getFlag("cluster-id");
    if (id === undefined) {
      if (hadDb && store.listNodes().length + store.listClients().length > 0) {
        throw new StoreCorruptError(`Cannot start: ${dbPath} holds nodes but no cluster id`);
      }
      if (marker !== undefined) throw emptied(dbPath, markerPath, dataDir, marker);
      const fresh = newSecret().slice(0, 16);
      store.setFlag("cluster-id", fresh);
      writeSecretFileSync(markerPath, fresh + "\n");
    } else if (marker !== undefined && marker !== id) {
      throw new StoreCorruptError(
        `Cannot start: ${dbPath} belongs to cluster ${id} but ${markerPath} names cluster ${marker}`,
      );
    } else if (marker === undefined) {
      writeSecretFileSync(markerPath, id + "\n");
    }
    const served = readRevisionMark(dataDir);
    if (served !== undefined && store.revision() < served) {
      if (!options.restored) {
        throw new StoreCorruptError(
          `Cannot start: ${dbPath} is at revision ${store.revision()}, but this manager already served revision ${served}; the store lost committed changes (a write-ahead log deleted or cut, or an old copy put back). Restore the newest copy, or if this old copy is what you mean to run, start once with --restored (nodes then resync from a full snapshot)`,
        );
      }
      store.advanceRevision(served + 1);
      options.logger.warn(
        "Started a restored store: revision moved from {from} past {served}; nodes resync from snapshots",
        { from: served, served },
      );
    }
    return store;
  } catch (err) {
    try {
      db.close();
    } catch {
      // closing a broken handle may fail too; the first error is the one to report
    }
    throw openFailure(err, dbPath, dataDir);
  }
}

/**
 * An emptied (or truncated, or replaced) database where a cluster lived:
 * starting it as a new cluster would hand out every running node's subnets again.
 */
function emptied(dbPath: string, markerPath: string, dataDir: string, marker: string) {
  return new StoreCorruptError(
    `Cannot start: ${dbPath} holds no cluster, but ${markerPath} says ${dataDir} held cluster ${marker}; the store was emptied or replaced. Restore ${dbPath} from a backup, or empty ${dataDir} to create a new cluster (every node must then leave and join again)`,
  );
}

/** The error to stop with when the store cannot be opened: a busy file is named as such. */
function openFailure(err: unknown, dbPath: string, dataDir: string): Error {
  const message = err instanceof Error ? err.message : String(err);
  if (/database is locked|SQLITE_BUSY/i.test(message)) {
    return new StoreCorruptError(
      `Cannot open ${dbPath}: another process holds it (is another wgcni cluster serve using ${dataDir}?)`,
    );
  }
  if (err instanceof StoreCorruptError) return err;
  return new StoreCorruptError(`Cannot open ${dbPath}: ${message}`);
}
