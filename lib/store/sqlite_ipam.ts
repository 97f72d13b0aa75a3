/**
 * Durable IPAM state in SQLite (`node:sqlite`), several pools per database
 * (one namespace each), synchronous so an allocation can join the caller's
 * transaction. Indices are stored as fixed-width hex text: a /64 has more
 * indices than SQLite's 64-bit signed integers hold.
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { StoreCorruptError } from "../errors.ts";
import type { IpamStore } from "../ipam/store.ts";

const SCHEMA_VERSION = 1;

/**
 * Opens (or creates) a database for durable state: WAL, synchronous=FULL,
 * and an integrity check; a torn or foreign file is refused with
 * {@linkcode StoreCorruptError}, never replaced by an empty one.
 */
export function openDatabase(path: string): DatabaseSync {
  ownerOnly(path);
  let db: DatabaseSync | undefined;
  try {
    db = new DatabaseSync(path);
    db.exec("PRAGMA busy_timeout = 5000");
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = FULL");
    const rows = db.prepare("PRAGMA quick_check").all() as { quick_check: string }[];
    if (rows.length !== 1 || rows[0]?.quick_check !== "ok") {
      throw new Error(rows.map((r) => r.quick_check).join("; "));
    }
    return db;
  } catch (err) {
    db?.close();
    throw new StoreCorruptError(
      `Cannot open ${path}: the file is damaged or not a wgcni database (${
        (err as Error).message
      }); ` +
        "refusing to start over it",
    );
  }
}

/**
 * Makes the database file (created empty when absent) and its WAL and
 * shared-memory files readable by their owner only. SQLite creates the WAL
 * and -shm files with the mode of the database file, so a 0600 database keeps
 * them 0600 too.
 */
function ownerOnly(path: string): void {
  Deno.openSync(path, { write: true, create: true, mode: 0o600 }).close();
  for (const f of [path, `${path}-wal`, `${path}-shm`]) {
    try {
      if ((Deno.statSync(f).mode! & 0o077) !== 0) Deno.chmodSync(f, 0o600);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

const hex = (i: bigint) => i.toString(16).padStart(32, "0");
const unhex = (s: string) => BigInt(`0x${s}`);

/** One pool's state inside a shared database. */
export class SqliteIpamStore implements IpamStore {
  readonly #ns: string;
  readonly #s: Record<string, StatementSync>;

  constructor(db: DatabaseSync, namespace: string) {
    this.#ns = namespace;
    db.exec(`CREATE TABLE IF NOT EXISTS ipam_schema (version INTEGER NOT NULL)`);
    const v = db.prepare("SELECT version FROM ipam_schema").get() as
      | { version: number }
      | undefined;
    if (v === undefined) db.exec(`INSERT INTO ipam_schema VALUES (${SCHEMA_VERSION})`);
    else if (v.version !== SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot use IPAM schema version ${v.version}; this wgcni knows ${SCHEMA_VERSION}`,
      );
    }
    db.exec(`CREATE TABLE IF NOT EXISTS ipam_bindings (
      ns TEXT NOT NULL, owner TEXT NOT NULL, idx TEXT NOT NULL,
      PRIMARY KEY (ns, owner), UNIQUE (ns, idx))`);
    db.exec(`CREATE TABLE IF NOT EXISTS ipam_released (
      ns TEXT NOT NULL, idx TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (ns, idx))`);
    db.exec(`CREATE INDEX IF NOT EXISTS ipam_released_seq ON ipam_released (ns, seq)`);
    db.exec(`CREATE TABLE IF NOT EXISTS ipam_cursor (ns TEXT PRIMARY KEY, cursor TEXT NOT NULL)`);
    this.#s = {
      indexOf: db.prepare(`SELECT idx FROM ipam_bindings WHERE ns = ? AND owner = ?`),
      ownerAt: db.prepare(`SELECT owner FROM ipam_bindings WHERE ns = ? AND idx = ?`),
      bind: db.prepare(`INSERT OR REPLACE INTO ipam_bindings VALUES (?, ?, ?)`),
      unreleased: db.prepare(`DELETE FROM ipam_released WHERE ns = ? AND idx = ?`),
      unbind: db.prepare(`DELETE FROM ipam_bindings WHERE ns = ? AND owner = ? RETURNING idx`),
      maxSeq: db.prepare(`SELECT MAX(seq) AS m FROM ipam_released WHERE ns = ?`),
      push: db.prepare(`INSERT OR REPLACE INTO ipam_released VALUES (?, ?, ?)`),
      oldest: db.prepare(`SELECT idx FROM ipam_released WHERE ns = ? ORDER BY seq LIMIT 1`),
      released: db.prepare(`SELECT idx FROM ipam_released WHERE ns = ? ORDER BY seq`),
      cursor: db.prepare(`SELECT cursor FROM ipam_cursor WHERE ns = ?`),
      setCursor: db.prepare(`INSERT OR REPLACE INTO ipam_cursor VALUES (?, ?)`),
      count: db.prepare(`SELECT COUNT(*) AS n FROM ipam_bindings WHERE ns = ?`),
      list: db.prepare(`SELECT owner, idx FROM ipam_bindings WHERE ns = ? ORDER BY idx`),
    };
  }

  indexOf(owner: string) {
    const r = this.#s.indexOf!.get(this.#ns, owner) as { idx: string } | undefined;
    return r && unhex(r.idx);
  }
  ownerAt(index: bigint) {
    return (this.#s.ownerAt!.get(this.#ns, hex(index)) as { owner: string } | undefined)?.owner;
  }
  bind(owner: string, index: bigint) {
    this.#s.bind!.run(this.#ns, owner, hex(index));
    this.#s.unreleased!.run(this.#ns, hex(index));
  }
  unbind(owner: string) {
    const r = this.#s.unbind!.get(this.#ns, owner) as { idx: string } | undefined;
    return r && unhex(r.idx);
  }
  pushReleased(index: bigint) {
    const m = (this.#s.maxSeq!.get(this.#ns) as { m: number | null }).m ?? 0;
    this.#s.push!.run(this.#ns, hex(index), m + 1);
  }
  popReleased() {
    const r = this.#s.oldest!.get(this.#ns) as { idx: string } | undefined;
    if (!r) return undefined;
    this.#s.unreleased!.run(this.#ns, r.idx);
    return unhex(r.idx);
  }
  released() {
    return (this.#s.released!.all(this.#ns) as { idx: string }[]).map((r) => unhex(r.idx));
  }
  cursor() {
    const r = this.#s.cursor!.get(this.#ns) as { cursor: string } | undefined;
    return r ? unhex(r.cursor) : 0n;
  }
  setCursor(cursor: bigint) {
    this.#s.setCursor!.run(this.#ns, hex(cursor));
  }
  count() {
    return Number((this.#s.count!.get(this.#ns) as { n: number }).n);
  }
  list() {
    return (this.#s.list!.all(this.#ns) as { owner: string; idx: string }[]).map((r) => ({
      owner: r.owner,
      index: unhex(r.idx),
    }));
  }
}
