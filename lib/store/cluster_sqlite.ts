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
import type { Logger } from "../log.ts";
import type { WatchEvent } from "../api/cluster_types.ts";
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StoreCorruptError,
  UnavailableError,
} from "../errors.ts";
import { applyIpamChanges, type Family } from "../ipam/mod.ts";
import type { PoolConfig, StoreStats } from "./cluster_store.ts";
import { PoolLayout } from "./cluster_pools.ts";
import {
  type ChangeSet,
  type ClusterView,
  isEmpty,
  peersOf,
  type Planned,
} from "./cluster_view.ts";
import { checkHoldings } from "./cluster_rules.ts";
import { MemoryClusterState } from "./cluster_state.ts";
import { numbered, PeerFeed, RuleStore } from "./_engine.ts";
import { openDatabase, SqliteIpamStore } from "./sqlite_ipam.ts";

/** The schema this code reads and writes. */
export const SCHEMA_VERSION = 1;

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
];

/** Options of {@linkcode SqliteClusterStore.open}. */
export interface SqliteClusterStoreOptions {
  readonly pools: PoolConfig;
  /** How long a removed node's subnets wait before they are handed out again (default 1 day). */
  readonly graceMs?: number;
  /** Peer changes kept for replay (default 10,000). */
  readonly historyLimit?: number;
  readonly logger?: Logger;
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

type Row = Record<string, string | number | null>;

function samePools(a: PoolConfig, b: PoolConfig): boolean {
  return JSON.stringify([a.podCidrs, a.clientCidrs, a.nodeMaskV4, a.nodeMaskV6]) ===
    JSON.stringify([b.podCidrs, b.clientCidrs, b.nodeMaskV4, b.nodeMaskV6]);
}

function describePools(p: PoolConfig): string {
  const clients = p.clientCidrs.length ? p.clientCidrs.join(", ") : "none";
  return `pod pools ${
    p.podCidrs.join(", ")
  } (node subnets /${p.nodeMaskV4} and /${p.nodeMaskV6}), client pools ${clients}`;
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

/** The pools a store file was created with (what `wgcni cluster migrate` opens it with). */
export function readStoredPools(path: string): PoolConfig | undefined {
  const db = openDatabase(path);
  try {
    const row = db.prepare("SELECT value FROM cluster_meta WHERE key = 'pools'").get() as
      | { value: string }
      | undefined;
    return row === undefined ? undefined : JSON.parse(row.value) as PoolConfig;
  } catch (err) {
    throw new StoreCorruptError(`Cannot read the pools of ${path}: ${(err as Error).message}`);
  } finally {
    db.close();
  }
}

/** A {@linkcode ClusterStore} in one SQLite database. */
export class SqliteClusterStore extends RuleStore<"sync"> {
  readonly #db: DatabaseSync;
  readonly #layout: PoolLayout;
  readonly #ipam = new Map<string, SqliteIpamStore>();
  readonly #historyLimit: number;
  readonly #logger: Logger | undefined;
  readonly #groupCommit: boolean;
  readonly #stmts = new Map<string, StatementSync>();
  readonly #feed: PeerFeed;
  #state: MemoryClusterState;
  /** Events of the open transaction, numbered, published once it commits. */
  #pending: WatchEvent[] = [];
  /** The open group transaction: its waiters and the timer that commits it. */
  #group: { done: PromiseWithResolvers<void>; timer: ReturnType<typeof setTimeout> } | undefined;

  private constructor(db: DatabaseSync, options: SqliteClusterStoreOptions) {
    super(options.pools, { graceMs: options.graceMs });
    this.#db = db;
    this.#layout = new PoolLayout(options.pools);
    this.#historyLimit = options.historyLimit ?? 10_000;
    this.#logger = options.logger;
    this.#groupCommit = options.groupCommit ?? false;
    this.#feed = new PeerFeed({ logger: options.logger });
    this.#state = new MemoryClusterState(this.#layout);
  }

  protected get state(): MemoryClusterState {
    return this.#state;
  }

  protected get feed(): PeerFeed {
    return this.#feed;
  }

  /**
   * Opens (or creates) the cluster tables in `db`. Refuses, with
   * StoreCorruptError, a schema newer than this code, missing tables, rows
   * that do not parse, pools that lost what rows hold, and pools that differ
   * from the ones the store was created with while nodes or clients exist.
   */
  static open(db: DatabaseSync, options: SqliteClusterStoreOptions): SqliteClusterStore {
    let version: number;
    try {
      migrate(db);
      version = readVersion(db);
    } catch (err) {
      throw err instanceof StoreCorruptError ? err : new StoreCorruptError(
        `Cannot open the cluster store: ${(err as Error).message}`,
      );
    }
    if (version !== SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: its schema version is ${version}, this wgcni reads ${SCHEMA_VERSION}`,
      );
    }
    for (const table of FORMER_TABLES) {
      if (db.prepare("SELECT 1 AS x FROM sqlite_master WHERE name = ?").get(table) !== undefined) {
        throw new StoreCorruptError(
          `Cannot open the cluster store: table ${table} is from an earlier development build that kept the pools differently; empty the data directory to create a new cluster`,
        );
      }
    }
    const stored = db.prepare("SELECT value FROM cluster_meta WHERE key = 'pools'").get() as
      | { value: string }
      | undefined;
    const counts = db.prepare(
      "SELECT (SELECT count(*) FROM cluster_nodes) + (SELECT count(*) FROM cluster_clients) + (SELECT count(*) FROM cluster_quarantine) AS n",
    ).get() as { n: number };
    if (stored !== undefined) {
      const before = JSON.parse(stored.value) as PoolConfig;
      if (!samePools(before, options.pools) && counts.n > 0) {
        throw new StoreCorruptError(
          `Cannot open the cluster store with ${
            describePools(options.pools)
          }: it was created with ${
            describePools(before)
          } and holds nodes or clients; changing the pools of a running cluster is not supported`,
        );
      }
    }
    const store = new SqliteClusterStore(db, options);
    try {
      db.exec("BEGIN IMMEDIATE");
      store.#setMeta("pools", JSON.stringify(options.pools));
      // Creates lib/ipam's tables on first use.
      for (const s of store.#layout.slots) {
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

  #rows(sql: string): Row[] {
    return this.#stmt(sql).all() as Row[];
  }

  #meta(key: string): string | undefined {
    const row = this.#stmt("SELECT value FROM cluster_meta WHERE key = ?").get(key) as
      | { value: string }
      | undefined;
    return row?.value;
  }

  #setMeta(key: string, value: string): void {
    this.#stmt(
      "INSERT INTO cluster_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ).run(key, value);
  }

  /** Reads every row into a new state, checking each row parses and the pools hold what rows hold. */
  #load(): void {
    const state = new MemoryClusterState(this.#layout);
    let revision, floor;
    try {
      revision = Number(this.#meta("revision") ?? "0");
      floor = Number(this.#meta("history_floor") ?? "0");
      if (!Number.isSafeInteger(revision) || !Number.isSafeInteger(floor)) {
        throw new Error("the revision is not a number");
      }
      for (const r of this.#rows("SELECT * FROM cluster_nodes")) {
        state.setNode(r.name as string, {
          name: r.name as string,
          publicKey: r.public_key as string,
          endpoint: r.endpoint as string,
          subnets: JSON.parse(r.subnets as string) as string[],
          registeredAt: r.registered_at as number,
          lastSeenAt: r.last_seen_at as number,
          credentialHash: r.credential_hash as string,
        });
      }
      for (const r of this.#rows("SELECT * FROM cluster_clients")) {
        state.setClient(r.name as string, {
          name: r.name as string,
          publicKey: r.public_key as string,
          addresses: JSON.parse(r.addresses as string) as string[],
          createdAt: r.created_at as number,
        });
      }
      for (const r of this.#rows("SELECT * FROM cluster_tokens")) {
        state.setToken(r.id as string, {
          id: r.id as string,
          kind: r.kind as "admin" | "join",
          expiresAt: r.expires_at as number | null,
          singleUse: r.single_use === 1,
          used: r.used === 1,
          createdAt: r.created_at as number,
          hash: r.hash as string,
        });
      }
      for (const r of this.#rows("SELECT key, value FROM cluster_meta WHERE key LIKE 'flag:%'")) {
        state.setFlag((r.key as string).slice("flag:".length), r.value as string);
      }
      for (const r of this.#rows("SELECT * FROM cluster_quarantine")) {
        state.setQuarantine(r.subnet as string, {
          subnet: r.subnet as string,
          family: r.family as Family,
          name: r.name as string,
          publicKey: r.public_key as string,
          releaseAt: r.release_at as number,
        });
      }
      for (const [ns, sql] of this.#ipam) {
        const mem = state.ipamStore(ns);
        for (const { owner, index } of sql.list()) mem.bind(owner, index);
        for (const index of sql.released()) mem.pushReleased(index);
        mem.setCursor(sql.cursor());
      }
    } catch (err) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: a stored row does not read back (${
          (err as Error).message
        })`,
      );
    }
    checkHoldings(state);
    state.rev = revision;
    this.#state = state;
    this.#feed.reset(peersOf(state), revision, floor);
  }

  protected transact<T>(
    what: string,
    rule: (view: ClusterView) => Planned<T>,
    grouped = false,
  ): T {
    const group = grouped && this.#groupCommit;
    if (!group) this.#flushGroup();
    let planned: Planned<T>;
    try {
      planned = rule(this.#state);
    } catch (err) {
      throw storeError(err, what);
    }
    const { result, changes } = planned;
    if (isEmpty(changes)) return result;
    if (group) {
      this.#openGroup(what);
      try {
        this.#db.exec("SAVEPOINT grouped");
        const events = this.#write(changes);
        this.#db.exec("RELEASE grouped");
        this.#pending.push(...events);
      } catch (err) {
        try {
          this.#db.exec("ROLLBACK TO grouped");
          this.#db.exec("RELEASE grouped");
        } catch (undoErr) {
          this.#logger?.error("Undoing a grouped write failed: {error}", { error: undoErr });
        }
        throw storeError(err, what);
      }
      // Later writes of the group read it; a group that fails to commit reloads.
      this.#state.apply(changes);
      return result;
    }
    try {
      this.#db.exec("BEGIN IMMEDIATE");
      this.#pending = this.#write(changes);
      this.#commit();
    } catch (err) {
      this.#rollback();
      throw storeError(err, what);
    }
    this.#state.apply(changes);
    this.#published();
    return result;
  }

  /** Writes a change set into the open transaction; returns its events, numbered. */
  #write(c: ChangeSet): WatchEvent[] {
    const each = <V>(
      m: ReadonlyMap<string, V | null>,
      del: string,
      put: (k: string, v: V) => void,
    ) => {
      for (const [k, v] of m) if (v === null) this.#stmt(del).run(k);
      for (const [k, v] of m) if (v !== null) put(k, v);
    };
    each(c.nodes, "DELETE FROM cluster_nodes WHERE name = ?", (_, n) =>
      this.#stmt(
        "INSERT INTO cluster_nodes (name, public_key, endpoint, subnets, credential_hash, registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key, endpoint = excluded.endpoint, subnets = excluded.subnets, credential_hash = excluded.credential_hash, registered_at = excluded.registered_at, last_seen_at = excluded.last_seen_at",
      ).run(
        n.name,
        n.publicKey,
        n.endpoint,
        JSON.stringify(n.subnets),
        n.credentialHash,
        n.registeredAt,
        n.lastSeenAt,
      ));
    each(c.clients, "DELETE FROM cluster_clients WHERE name = ?", (_, x) =>
      this.#stmt(
        "INSERT INTO cluster_clients (name, public_key, addresses, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key, addresses = excluded.addresses, created_at = excluded.created_at",
      ).run(x.name, x.publicKey, JSON.stringify(x.addresses), x.createdAt));
    each(c.tokens, "DELETE FROM cluster_tokens WHERE id = ?", (_, t) =>
      this.#stmt(
        "INSERT INTO cluster_tokens (id, kind, hash, expires_at, single_use, used, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, hash = excluded.hash, expires_at = excluded.expires_at, single_use = excluded.single_use, used = excluded.used, created_at = excluded.created_at",
      ).run(t.id, t.kind, t.hash, t.expiresAt, t.singleUse ? 1 : 0, t.used ? 1 : 0, t.createdAt));
    each(c.quarantine, "DELETE FROM cluster_quarantine WHERE subnet = ?", (_, q) =>
      this.#stmt(
        "INSERT INTO cluster_quarantine (subnet, family, name, public_key, release_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (subnet) DO UPDATE SET family = excluded.family, name = excluded.name, public_key = excluded.public_key, release_at = excluded.release_at",
      ).run(q.subnet, q.family, q.name, q.publicKey, q.releaseAt));
    for (const [k, v] of c.flags) {
      if (v === null) this.#stmt("DELETE FROM cluster_meta WHERE key = ?").run(`flag:${k}`);
      else this.#setMeta(`flag:${k}`, v);
    }
    for (const [ns, changes] of c.ipam) {
      let sql = this.#ipam.get(ns);
      if (sql === undefined) this.#ipam.set(ns, sql = new SqliteIpamStore(this.#db, ns));
      applyIpamChanges(sql, changes);
    }
    const events = numbered(c.events, this.#feed.revision + this.#pending.length);
    for (const e of events) {
      this.#stmt("INSERT INTO cluster_events (revision, event) VALUES (?, ?)").run(
        e.revision,
        JSON.stringify(e),
      );
    }
    return events;
  }

  /** Records the revision, trims the history and commits the open transaction. */
  #commit(): void {
    const last = this.#pending.at(-1)?.revision;
    if (last !== undefined) {
      this.#setMeta("revision", String(last));
      const cut = last - this.#historyLimit;
      if (cut > this.#feed.floor) {
        this.#stmt("DELETE FROM cluster_events WHERE revision <= ?").run(cut);
        this.#setMeta("history_floor", String(cut));
      }
    }
    this.#db.exec("COMMIT");
  }

  #rollback(): void {
    try {
      if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
    } catch (rollbackErr) {
      this.#logger?.error("Rolling back a store transaction failed: {error}", {
        error: rollbackErr,
      });
    }
    this.#pending = [];
  }

  /** Opens the group transaction of this event-loop turn, committed by {@linkcode #flushGroup}. */
  #openGroup(what: string): void {
    if (this.#group !== undefined) return;
    try {
      this.#db.exec("BEGIN IMMEDIATE");
    } catch (err) {
      throw storeError(err, what);
    }
    this.#pending = [];
    const done = Promise.withResolvers<void>();
    // Marked handled here: a caller that never asks still sees nothing unhandled.
    done.promise.catch(() => {});
    this.#group = { done, timer: setTimeout(() => this.#flushGroup(), 0) };
  }

  /** Commits the open group transaction, if any, and settles its waiters. */
  #flushGroup(): void {
    const group = this.#group;
    if (group === undefined) return;
    this.#group = undefined;
    clearTimeout(group.timer);
    try {
      this.#commit();
    } catch (err) {
      this.#rollback();
      // The state already holds the group's writes: read back what did commit.
      try {
        this.#load();
      } catch (loadErr) {
        this.#logger?.error("Reading the store back failed: {error}", { error: loadErr });
      }
      group.done.reject(storeError(err, "commit the writes of this moment"));
      return;
    }
    this.#published();
    group.done.resolve();
  }

  committed(): Promise<void> {
    return this.#group?.done.promise ?? Promise.resolve();
  }

  /** After a commit: the new revision, then listeners. */
  #published(): void {
    const events = this.#pending;
    this.#pending = [];
    if (events.length === 0) return;
    const cut = events.at(-1)!.revision - this.#historyLimit;
    if (cut > this.#feed.floor) this.#feed.floor = cut;
    this.#feed.publish(events);
    this.#state.rev = this.#feed.revision;
  }

  override eventsSince(revision: number): readonly WatchEvent[] | undefined {
    if (revision < this.#feed.floor || revision > this.#feed.revision) return undefined;
    const rows = this.#stmt(
      "SELECT event FROM cluster_events WHERE revision > ? ORDER BY revision",
    ).all(revision) as unknown as { event: string }[];
    const events = rows.map((r) => JSON.parse(r.event) as WatchEvent);
    // A gap means the log lost rows: a snapshot is the only safe answer.
    if (events.length !== this.#feed.revision - revision) return undefined;
    return events;
  }

  settle(): void {}

  /**
   * Moves the revision forward to `to` and forgets the replay history, so
   * that every watcher resumes from a full snapshot: for a store restored
   * from a backup, whose revisions nodes have already seen past.
   */
  advanceRevision(to: number): void {
    if (to <= this.#feed.revision) return;
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
    this.#feed.revision = this.#feed.floor = this.#state.rev = to;
  }

  stats(): StoreStats {
    return { conflicts: 0 };
  }

  ping(): void {
    this.#stmt("SELECT value FROM cluster_meta WHERE key = 'revision' OR key = 'pools' LIMIT 1")
      .get();
  }

  close(): void {
    this.#flushGroup();
    this.#feed.close();
    this.#stmts.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}

function readVersion(db: DatabaseSync): number {
  const row = db.prepare("SELECT value FROM cluster_meta WHERE key = 'schema_version'").get() as
    | { value: string }
    | undefined;
  if (row === undefined) {
    throw new StoreCorruptError("Cannot open the cluster store: it has no schema version");
  }
  return Number(row.value);
}

/** Creates the tables of a new store or brings an older schema up to date, in one transaction. */
function migrate(db: DatabaseSync): void {
  const hasMeta = db.prepare(
    "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'cluster_meta'",
  ).get() !== undefined;
  let version = 0;
  if (!hasMeta) {
    const stray = db.prepare(
      "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'cluster\\_%' ESCAPE '\\'",
    ).get() as { name: string } | undefined;
    if (stray !== undefined) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: table ${stray.name} exists but the schema record is missing`,
      );
    }
  }
  if (hasMeta) {
    version = readVersion(db);
    if (!Number.isSafeInteger(version) || version < 1) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: schema version "${version}" is not valid`,
      );
    }
    if (version > SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: it was written by a newer wgcni (schema ${version}, this one reads ${SCHEMA_VERSION})`,
      );
    }
    for (
      const table of [
        "cluster_tokens",
        "cluster_nodes",
        "cluster_clients",
        "cluster_events",
        "cluster_quarantine",
      ]
    ) {
      const found = db.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(table);
      if (found === undefined) {
        throw new StoreCorruptError(`Cannot open the cluster store: table ${table} is missing`);
      }
    }
  }
  if (version === SCHEMA_VERSION) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    for (let v = version; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v]!);
    db.prepare(
      "INSERT INTO cluster_meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ).run(String(SCHEMA_VERSION));
    db.exec("COMMIT");
  } catch (err) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw err;
  }
}
