/**
 * The embedded cluster store: one SQLite file (WAL, synchronous=FULL) holding
 * nodes, clients, tokens, the quarantine of released subnets, the event log
 * of peer changes, and the address pools (lib/ipam's tables, in the same
 * database, so an allocation and the row that holds it commit together).
 *
 * The whole cluster is read into a {@linkcode MemoryClusterState} at open;
 * the rules read that, and every change set is written to the tables and to
 * it in one transaction. Registrations and renewals of one event-loop turn
 * can share that transaction (group commit), each in its own savepoint.
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import type { WatchEvent } from "../domain/cluster.ts";
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StoreCorruptError,
  UnavailableError,
} from "../errors.ts";
import { applyIpamChanges } from "../ipam/mod.ts";
import type { PoolConfig } from "./cluster_store.ts";
import {
  type ChangeSet,
  type ClusterView,
  isEmpty,
  type NodeRecord,
  type Planned,
} from "./cluster_view.ts";
import { checkSamePools } from "./cluster_rules.ts";
import { MemoryClusterState } from "./cluster_state.ts";
import { type EngineOptions, numbered, readBack, RuleStore } from "./_engine.ts";
import { openDatabase, SqliteIpamStore } from "./sqlite_ipam.ts";

/** The schema this code reads and writes. */
export const SCHEMA_VERSION = 5;

/** Steps from one schema version to the next; index i migrates version i to i + 1. */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
  CREATE TABLE cluster_tokens (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('admin', 'join')),
    hash TEXT NOT NULL UNIQUE,
    expires_at INTEGER,
    single_use INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE cluster_nodes (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    subnets TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    registered_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX cluster_nodes_last_seen ON cluster_nodes (last_seen_at);
  CREATE TABLE cluster_clients (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    addresses TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE cluster_quarantine (
    subnet TEXT PRIMARY KEY,
    family INTEGER NOT NULL,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    release_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX cluster_quarantine_release ON cluster_quarantine (release_at);
  CREATE TABLE cluster_events (revision INTEGER PRIMARY KEY, event TEXT NOT NULL) STRICT;
  `,
  // What a node reports with its lease renewal (absent until it does).
  `
  ALTER TABLE cluster_nodes ADD COLUMN pods INTEGER;
  ALTER TABLE cluster_nodes ADD COLUMN ready INTEGER;
  `,
  // Set for a node behind NAT (its endpoint is what was seen of it).
  `
  ALTER TABLE cluster_nodes ADD COLUMN nat INTEGER;
  `,
  // A node's key rotation under way: its next key and when it switches, as JSON.
  `
  ALTER TABLE cluster_nodes ADD COLUMN next_key TEXT;
  `,
  // The MTU of a node's underlay link, as it reported.
  `
  ALTER TABLE cluster_nodes ADD COLUMN mtu INTEGER;
  `,
];

/** Options of {@linkcode SqliteClusterStore.open}. */
export interface SqliteClusterStoreOptions extends EngineOptions {
  /**
   * Registrations and lease renewals of one event-loop turn share one
   * transaction and one fsync (each in its own savepoint, so a refused one
   * changes nothing); callers wait for {@linkcode SqliteClusterStore.committed}
   * before answering. Off by default: every write commits before it returns.
   */
  readonly groupCommit?: boolean;
}

/** Tables of an allocator this store no longer reads; their rows would be lost silently. */
const FORMER_TABLES = ["cluster_pool_items", "cluster_pool_cursor"];

/**
 * How each kind of record is kept: its table, and per field the column
 * (after a colon: `json` for a JSON array, `bool` for 0/1), key first.
 */
const TABLES = {
  nodes:
    "cluster_nodes name publicKey:public_key endpoint subnets::json registeredAt:registered_at " +
    "lastSeenAt:last_seen_at credentialHash:credential_hash pods::opt ready::optbool nat::optbool " +
    "nextKey:next_key:optjson mtu::opt",
  clients: "cluster_clients name publicKey:public_key addresses::json createdAt:created_at",
  tokens: "cluster_tokens id kind expiresAt:expires_at singleUse:single_use:bool used::bool " +
    "createdAt:created_at hash",
  quarantine: "cluster_quarantine subnet family name publicKey:public_key releaseAt:release_at",
} as const;

type Kind = keyof typeof TABLES;
type Value = string | number | null;

/** Each kind's table, columns as [field, column, how] (key first), and its statements. */
const SCHEMA = Object.fromEntries(
  Object.entries(TABLES).map(([kind, spec]) => {
    const [table = "", ...fields] = spec.split(" ");
    const cols = fields.map((f): [string, string, string] => {
      const [field = "", column, how = ""] = f.split(":");
      return [field, column || field, how];
    });
    const key = cols[0]![1];
    const names = cols.map((x) => x[1]);
    const upsert = `INSERT INTO ${table} (${names}) VALUES (${names.map(() => "?")}) ` +
      `ON CONFLICT (${key}) DO UPDATE SET ${names.slice(1).map((n) => `${n} = excluded.${n}`)}`;
    return [kind, { table, cols, upsert, remove: `DELETE FROM ${table} WHERE ${key} = ?` }];
  }),
) as Record<
  Kind,
  { table: string; cols: [string, string, string][]; upsert: string; remove: string }
>;

function decode(how: string, v: Value): unknown {
  if (v === null && how.startsWith("opt")) return undefined;
  return how.endsWith("json") ? JSON.parse(v as string) : how.endsWith("bool") ? v === 1 : v;
}

function encode(how: string, v: unknown): Value {
  if (v === undefined && how.startsWith("opt")) return null;
  return how.endsWith("json") ? JSON.stringify(v) : how.endsWith("bool") ? (v ? 1 : 0) : v as Value;
}

/** True when two records of a node differ at most in when it was last seen. */
function sameButLease(a: NodeRecord, b: NodeRecord): boolean {
  return a.publicKey === b.publicKey && a.endpoint === b.endpoint && !a.nat === !b.nat &&
    a.nextKey?.publicKey === b.nextKey?.publicKey && a.nextKey?.switchAt === b.nextKey?.switchAt &&
    a.mtu === b.mtu &&
    a.credentialHash === b.credentialHash && a.registeredAt === b.registeredAt &&
    a.subnets.length === b.subnets.length && a.subnets.every((x, i) => x === b.subnets[i]);
}

/** Turns SQLite's own failures into errors the API can name; domain errors pass through. */
function storeError(err: unknown, what: string): Error {
  if (
    err instanceof AuthError || err instanceof ConflictError || err instanceof NotFoundError ||
    err instanceof PoolExhaustedError || err instanceof StoreCorruptError ||
    err instanceof UnavailableError || err instanceof TypeError || err instanceof RangeError
  ) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/malformed|not a database|corrupt/i.test(message)) {
    return new StoreCorruptError(`Cannot ${what}: the store is damaged (${message})`);
  }
  return new UnavailableError(`Cannot ${what}: the store failed (${message})`);
}

function storedPools(db: DatabaseSync): PoolConfig | undefined {
  const row = db.prepare("SELECT value FROM cluster_meta WHERE key = 'pools'").get();
  return row === undefined ? undefined : JSON.parse(row.value as string) as PoolConfig;
}

/** The pools a store file was created with (what `wgcni cluster migrate` opens it with). */
export function readStoredPools(path: string): PoolConfig | undefined {
  const db = openDatabase(path);
  try {
    return storedPools(db);
  } catch (err) {
    throw new StoreCorruptError(`Cannot read the pools of ${path}: ${(err as Error).message}`);
  } finally {
    db.close();
  }
}

/** A {@linkcode ClusterStore} in one SQLite database. */
export class SqliteClusterStore extends RuleStore<"sync"> {
  readonly #db: DatabaseSync;
  readonly #ipam = new Map<string, SqliteIpamStore>();
  readonly #groupCommit: boolean;
  readonly #stmts = new Map<string, StatementSync>();
  /** Events of the open transaction, numbered, published once it commits. */
  #pending: WatchEvent[] = [];
  /** The open group transaction: its waiters and the timer that commits it. */
  #group: { done: PromiseWithResolvers<void>; timer: ReturnType<typeof setTimeout> } | undefined;

  private constructor(db: DatabaseSync, options: SqliteClusterStoreOptions) {
    super({ ...options, ownLog: true });
    this.#db = db;
    this.#groupCommit = options.groupCommit ?? false;
  }

  /**
   * Opens (or creates) the cluster tables in `db`. Refuses, with
   * StoreCorruptError, a schema newer than this code, missing tables, rows
   * that do not parse, pools that lost what rows hold, and pools that differ
   * from the ones the store was created with while nodes or clients exist.
   */
  static open(db: DatabaseSync, options: SqliteClusterStoreOptions): SqliteClusterStore {
    try {
      migrate(db);
    } catch (err) {
      throw err instanceof StoreCorruptError ? err : new StoreCorruptError(
        `Cannot open the cluster store: ${(err as Error).message}`,
      );
    }
    const found = FORMER_TABLES.find((t) =>
      db.prepare("SELECT 1 AS x FROM sqlite_master WHERE name = ?").get(t) !== undefined
    );
    if (found !== undefined) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: table ${found} is from an earlier development build that kept the pools differently; empty the data directory to create a new cluster`,
      );
    }
    const held = db.prepare(
      "SELECT (SELECT count(*) FROM cluster_nodes) + (SELECT count(*) FROM cluster_clients) + (SELECT count(*) FROM cluster_quarantine) AS n",
    ).get()!.n as number;
    checkSamePools("the cluster store", storedPools(db), options.pools, held > 0);
    const store = new SqliteClusterStore(db, options);
    try {
      db.exec("BEGIN IMMEDIATE");
      store.#setMeta("pools", JSON.stringify(options.pools));
      // Creates lib/ipam's tables on first use.
      for (const s of store.layout.slots) {
        store.#ipam.set(s.namespace, new SqliteIpamStore(db, s.namespace));
      }
      db.exec("COMMIT");
    } catch (err) {
      if (db.isTransaction) db.exec("ROLLBACK");
      throw err;
    }
    store.#load();
    return store;
  }

  #stmt(sql: string): StatementSync {
    let s = this.#stmts.get(sql);
    if (s === undefined) this.#stmts.set(sql, s = this.#db.prepare(sql));
    return s;
  }

  #meta(key: string): string | undefined {
    const row = this.#stmt("SELECT value FROM cluster_meta WHERE key = ?").get(key);
    return row?.value as string | undefined;
  }

  #setMeta(key: string, value: string): void {
    this.#stmt("INSERT OR REPLACE INTO cluster_meta (key, value) VALUES (?, ?)").run(key, value);
  }

  /** Reads every row into a new state, checking each row parses and the pools hold what rows hold. */
  #load(): void {
    const state = new MemoryClusterState(this.layout);
    const [revision, floor] = readBack("the cluster store", "a stored row", () => {
      const revision = Number(this.#meta("revision") ?? "0");
      const floor = Number(this.#meta("history_floor") ?? "0");
      if (!Number.isSafeInteger(revision) || !Number.isSafeInteger(floor)) {
        throw new Error("the revision is not a number");
      }
      const set = {
        nodes: state.setNode,
        clients: state.setClient,
        tokens: state.setToken,
        quarantine: state.setQuarantine,
      } as Record<Kind, (key: string, v: unknown) => void>;
      for (const kind of Object.keys(TABLES) as Kind[]) {
        const { table, cols } = SCHEMA[kind];
        for (const row of this.#stmt(`SELECT * FROM ${table}`).all()) {
          // An optional column that is empty leaves its field out.
          const record = Object.fromEntries(
            cols.map(([f, c, how]) => [f, decode(how, row[c] as Value)])
              .filter(([, v]) => v !== undefined),
          );
          set[kind].call(state, record[cols[0]![0]] as string, record);
        }
      }
      const flags = this.#stmt("SELECT key, value FROM cluster_meta WHERE key LIKE 'flag:%'");
      for (const r of flags.all()) {
        state.setFlag((r.key as string).slice("flag:".length), r.value as string);
      }
      for (const [ns, sql] of this.#ipam) {
        const mem = state.ipamStore(ns);
        for (const { owner, index } of sql.list()) mem.bind(owner, index);
        for (const index of sql.released()) mem.pushReleased(index);
        mem.setCursor(sql.cursor());
      }
      return [revision, floor] as const;
    });
    this.adopt(state, revision, floor);
  }

  protected transact<T>(what: string, rule: (view: ClusterView) => Planned<T>, grouped = false): T {
    const group = grouped && this.#groupCommit;
    if (!group) this.#flushGroup();
    let planned: Planned<T>;
    try {
      planned = rule(this.state);
      if (isEmpty(planned.changes)) return planned.result;
      if (!this.#db.isTransaction) this.#db.exec("BEGIN IMMEDIATE");
      // A grouped write gets a savepoint, so that its failure undoes it alone.
      if (group) this.#db.exec("SAVEPOINT change");
    } catch (err) {
      throw storeError(err, what);
    }
    const { result, changes } = planned;
    try {
      this.#pending.push(...this.#write(changes));
      if (group) this.#db.exec("RELEASE change");
    } catch (err) {
      try {
        if (group) this.#db.exec("ROLLBACK TO change; RELEASE change");
        if (this.#group === undefined) this.#rollback();
      } catch (undoErr) {
        this.logger?.error("Undoing a write failed: {error}", { error: undoErr });
      }
      throw storeError(err, what);
    }
    // Later writes of a group read it; a transaction that fails to commit reloads.
    this.state.apply(changes);
    if (!group) {
      this.#commit(what);
    } else if (this.#group === undefined) {
      const done = Promise.withResolvers<void>();
      // Marked handled here: a caller that never asks still sees nothing unhandled.
      done.promise.catch(() => {});
      this.#group = { done, timer: setTimeout(() => this.#flushGroup(), 0) };
    }
    return result;
  }

  /** Writes a change set into the open transaction; returns its events, numbered. */
  #write(c: ChangeSet): WatchEvent[] {
    for (const kind of Object.keys(TABLES) as Kind[]) {
      const m = c[kind] as ReadonlyMap<string, Record<string, unknown> | null>;
      if (m.size === 0) continue;
      const { cols, upsert, remove } = SCHEMA[kind];
      const put = this.#stmt(upsert);
      for (const [k, v] of m) if (v === null) this.#stmt(remove).run(k);
      for (const v of m.values()) {
        if (v === null) continue;
        // A renewal changes one column: write that alone, not the row and its indexes.
        const before = kind === "nodes" ? this.state.node(v.name as string) : undefined;
        if (before !== undefined && sameButLease(before, v as unknown as NodeRecord)) {
          this.#stmt(
            "UPDATE cluster_nodes SET last_seen_at = ?, pods = ?, ready = ? WHERE name = ?",
          ).run(
            v.lastSeenAt as number,
            encode("opt", v.pods),
            encode("optbool", v.ready),
            before.name,
          );
        } else put.run(...cols.map(([f, , how]) => encode(how, v[f])));
      }
    }
    for (const [k, v] of c.flags) {
      if (v === null) this.#stmt("DELETE FROM cluster_meta WHERE key = ?").run(`flag:${k}`);
      else this.#setMeta(`flag:${k}`, v);
    }
    for (const [ns, changes] of c.ipam) {
      let sql = this.#ipam.get(ns);
      if (sql === undefined) this.#ipam.set(ns, sql = new SqliteIpamStore(this.#db, ns));
      applyIpamChanges(sql, changes);
    }
    const events = numbered(c.events, this.feed.revision + this.#pending.length);
    const insert = this.#stmt("INSERT INTO cluster_events (revision, event) VALUES (?, ?)");
    for (const e of events) insert.run(e.revision, JSON.stringify(e));
    return events;
  }

  /**
   * Records the revision, trims the history, commits the open transaction
   * and publishes its events. When the commit fails, reads the store back
   * (the state already holds the writes) and throws.
   */
  #commit(what: string): void {
    const events = this.#pending;
    this.#pending = [];
    const last = events.at(-1)?.revision;
    try {
      if (last !== undefined) {
        this.#setMeta("revision", String(last));
        const cut = last - this.historyLimit;
        if (cut > this.feed.floor) {
          this.#stmt("DELETE FROM cluster_events WHERE revision <= ?").run(cut);
          this.#setMeta("history_floor", String(cut));
        }
      }
      this.#db.exec("COMMIT");
    } catch (err) {
      this.#rollback();
      try {
        this.#load();
      } catch (loadErr) {
        this.logger?.error("Reading the store back failed: {error}", { error: loadErr });
      }
      throw storeError(err, what);
    }
    if (last === undefined) return;
    this.feed.floor = Math.max(this.feed.floor, last - this.historyLimit);
    this.feed.publish(events);
    this.state.rev = this.feed.revision;
  }

  #rollback(): void {
    try {
      if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
    } catch (err) {
      this.logger?.error("Rolling back a store transaction failed: {error}", { error: err });
    }
    this.#pending = [];
  }

  /** Commits the open group transaction, if any, and settles its waiters. */
  #flushGroup(): void {
    const group = this.#group;
    if (group === undefined) return;
    this.#group = undefined;
    clearTimeout(group.timer);
    try {
      this.#commit("commit the writes of this moment");
      group.done.resolve();
    } catch (err) {
      group.done.reject(err);
    }
  }

  override committed(): Promise<void> {
    return this.#group?.done.promise ?? Promise.resolve();
  }

  override eventsSince(revision: number): readonly WatchEvent[] | undefined {
    if (revision < this.feed.floor || revision > this.feed.revision) return undefined;
    const rows = this.#stmt("SELECT event FROM cluster_events WHERE revision > ? ORDER BY revision")
      .all(revision);
    const events = rows.map((r) => JSON.parse(r.event as string) as WatchEvent);
    // A gap means the log lost rows: a snapshot is the only safe answer.
    if (events.length !== this.feed.revision - revision) return undefined;
    return events;
  }

  /**
   * Moves the revision forward to `to` and forgets the replay history, so
   * that every watcher resumes from a full snapshot: for a store restored
   * from a backup, whose revisions nodes have already seen past.
   */
  advanceRevision(to: number): void {
    if (to <= this.feed.revision) return;
    this.#flushGroup();
    try {
      this.#db.exec("BEGIN IMMEDIATE");
      this.#stmt("DELETE FROM cluster_events").run();
      this.#setMeta("revision", String(to));
      this.#setMeta("history_floor", String(to));
      this.#db.exec("COMMIT");
    } catch (err) {
      this.#rollback();
      throw storeError(err, "advance the revision");
    }
    this.feed.revision = this.feed.floor = this.state.rev = to;
  }

  override ping(): void {
    this.#meta("revision");
  }

  override close(): void {
    this.#flushGroup();
    super.close();
    this.#stmts.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}

/** Creates the tables of a new store or brings an older schema up to date, in one transaction. */
function migrate(db: DatabaseSync): void {
  const table = (name: string) =>
    db.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?").get(name);
  let version = 0;
  if (table("cluster_meta") === undefined) {
    const stray = db.prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'cluster\\_%' ESCAPE '\\'",
    ).get();
    if (stray !== undefined) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: table ${stray.name} exists but the schema record is missing`,
      );
    }
  } else {
    const row = db.prepare("SELECT value FROM cluster_meta WHERE key = 'schema_version'").get();
    if (row === undefined) {
      throw new StoreCorruptError("Cannot open the cluster store: it has no schema version");
    }
    version = Number(row.value);
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: schema version "${row.value}" is not valid`,
      );
    }
    if (version > SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: it was written by a newer wgcni (schema ${version}, this one reads ${SCHEMA_VERSION})`,
      );
    }
    const tables = Object.values(SCHEMA).map((t) => t.table);
    for (const name of [...tables, "cluster_events"]) {
      if (table(name) === undefined) {
        throw new StoreCorruptError(`Cannot open the cluster store: table ${name} is missing`);
      }
    }
  }
  if (version === SCHEMA_VERSION) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    for (let v = version; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]!);
    db.prepare("INSERT OR REPLACE INTO cluster_meta VALUES ('schema_version', ?)")
      .run(String(SCHEMA_VERSION));
    db.exec("COMMIT");
  } catch (err) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw err;
  }
}
