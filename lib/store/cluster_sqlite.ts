/**
 * The embedded cluster store: one SQLite file (WAL, synchronous=FULL) holding
 * nodes, clients, tokens, the quarantine of released subnets, the event log
 * of peer changes, and the address pools (through lib/ipam's SQLite store, in
 * the same database, so an allocation and the row that owns it commit
 * together).
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import type { Logger } from "../log.ts";
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StoreCorruptError,
  UnavailableError,
} from "../errors.ts";
import type {
  ClientInfo,
  NodeInfo,
  PeerEntry,
  PeerSnapshot,
  WatchEvent,
} from "../api/cluster_types.ts";
import {
  checkReregistration,
  clientPeer,
  type ClusterStore,
  type EventListener,
  hashSecret,
  newTokenId,
  nodePeer,
  type PoolConfig,
  type PoolUsage,
  type Principal,
  type RegisterOutcome,
  resetCredentialHash,
  type StoreDump,
  type StoreStats,
  type TokenRecord,
} from "./cluster_store.ts";
import { type ClusterPools, openClusterPools } from "./cluster_pools.ts";

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

interface NodeRow {
  name: string;
  public_key: string;
  endpoint: string;
  subnets: string;
  credential_hash: string;
  registered_at: number;
  last_seen_at: number;
}

interface ClientRow {
  name: string;
  public_key: string;
  addresses: string;
  created_at: number;
}

interface TokenRow {
  id: string;
  kind: "admin" | "join";
  expires_at: number | null;
  single_use: number;
  used: number;
  created_at: number;
}

function nodeFromRow(r: NodeRow): NodeInfo {
  return {
    name: r.name,
    publicKey: r.public_key,
    endpoint: r.endpoint,
    subnets: JSON.parse(r.subnets) as string[],
    registeredAt: r.registered_at,
    lastSeenAt: r.last_seen_at,
  };
}

function clientFromRow(r: ClientRow): ClientInfo {
  return {
    name: r.name,
    publicKey: r.public_key,
    addresses: JSON.parse(r.addresses) as string[],
    createdAt: r.created_at,
  };
}

function tokenFromRow(r: TokenRow): TokenRecord {
  return {
    id: r.id,
    kind: r.kind,
    expiresAt: r.expires_at,
    singleUse: r.single_use === 1,
    used: r.used === 1,
    createdAt: r.created_at,
  };
}

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

function peerKey(kind: PeerEntry["kind"], name: string): string {
  return `${kind}/${name}`;
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

/** A {@linkcode ClusterStore} in one SQLite database. */
export class SqliteClusterStore implements ClusterStore {
  readonly pools: PoolConfig;
  readonly #db: DatabaseSync;
  readonly #ipam: ClusterPools;
  readonly #graceMs: number;
  readonly #historyLimit: number;
  readonly #logger: Logger | undefined;
  readonly #listeners = new Set<EventListener>();
  /** Every peer by `kind/name`, kept in step with committed rows (snapshots come from here). */
  readonly #peers = new Map<string, PeerEntry>();
  readonly #stmts = new Map<string, StatementSync>();
  #revision = 0;
  #floor = 0;
  /** Work to do once the running transaction has committed. */
  #afterCommit: (() => void)[] = [];
  #pending: WatchEvent[] = [];
  readonly #groupCommit: boolean;
  /** The open group transaction: its waiters and the timer that commits it. */
  #group: { done: PromiseWithResolvers<void>; timer: ReturnType<typeof setTimeout> } | undefined;

  private constructor(db: DatabaseSync, options: SqliteClusterStoreOptions, ipam: ClusterPools) {
    this.#db = db;
    this.pools = options.pools;
    this.#ipam = ipam;
    this.#graceMs = options.graceMs ?? 86_400_000;
    this.#historyLimit = options.historyLimit ?? 10_000;
    this.#logger = options.logger;
    this.#groupCommit = options.groupCommit ?? false;
  }

  /**
   * Opens (or creates) the cluster tables in `db`. Refuses, with
   * StoreCorruptError, a schema newer than this code, missing tables, rows
   * that do not parse, and pools that differ from the ones the store was
   * created with while nodes or clients exist.
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
    let ipam: ClusterPools;
    try {
      db.exec("BEGIN IMMEDIATE");
      db.prepare(
        "INSERT INTO cluster_meta (key, value) VALUES ('pools', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ).run(JSON.stringify(options.pools));
      ipam = openClusterPools(db, options.pools);
      db.exec("COMMIT");
    } catch (err) {
      if (db.isTransaction) db.exec("ROLLBACK");
      throw err;
    }
    const store = new SqliteClusterStore(db, options, ipam);
    store.#load();
    return store;
  }

  #stmt(sql: string): StatementSync {
    let s = this.#stmts.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql);
      this.#stmts.set(sql, s);
    }
    return s;
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

  /** Reads the revision and every peer into memory, checking each row parses. */
  #load(): void {
    try {
      this.#revision = Number(this.#meta("revision") ?? "0");
      this.#floor = Number(this.#meta("history_floor") ?? "0");
      if (!Number.isSafeInteger(this.#revision) || !Number.isSafeInteger(this.#floor)) {
        throw new Error("the revision is not a number");
      }
      for (
        const row of this.#stmt("SELECT * FROM cluster_nodes ORDER BY registered_at, name").all()
      ) {
        const node = nodeFromRow(row as unknown as NodeRow);
        this.#peers.set(peerKey("node", node.name), nodePeer(node));
      }
      for (
        const row of this.#stmt("SELECT * FROM cluster_clients ORDER BY created_at, name").all()
      ) {
        const client = clientFromRow(row as unknown as ClientRow);
        this.#peers.set(peerKey("client", client.name), clientPeer(client));
      }
    } catch (err) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: a stored row does not read back (${
          (err as Error).message
        })`,
      );
    }
    this.#checkPools();
  }

  /**
   * Refuses a store whose pools lost what its rows hold: serving it would
   * hand out subnets and addresses already in use.
   */
  #checkPools(): void {
    const held: { what: string; cidr: string }[] = [];
    for (const peer of this.#peers.values()) {
      for (const cidr of peer.allowedIps) held.push({ what: `${peer.kind} ${peer.name}`, cidr });
    }
    const quarantined = this.#stmt("SELECT subnet, name FROM cluster_quarantine")
      .all() as unknown as {
        subnet: string;
        name: string;
      }[];
    for (const r of quarantined) {
      held.push({ what: `removed node ${r.name} (in its grace period)`, cidr: r.subnet });
    }
    const lost = held.find((h) => !this.#ipam.isAllocated(h.cidr));
    if (lost !== undefined) {
      throw new StoreCorruptError(
        `Cannot open the cluster store: ${lost.cidr} of ${lost.what} is not allocated in its pool; the pool state is damaged or belongs to other pools`,
      );
    }
  }

  /** Runs `fn` as one IMMEDIATE transaction; on commit applies in-memory changes and notifies. */
  #tx<T>(what: string, fn: () => T): T {
    this.#flushGroup();
    this.#afterCommit = [];
    this.#pending = [];
    let result: T;
    try {
      this.#db.exec("BEGIN IMMEDIATE");
      result = fn();
      this.#commit();
    } catch (err) {
      this.#rollback();
      throw storeError(err, what);
    }
    this.#published();
    return result;
  }

  /** Records the revision, trims the history and commits the open transaction. */
  #commit(): void {
    if (this.#pending.length > 0) {
      this.#setMeta("revision", String(this.#revision + this.#pending.length));
      const cut = this.#revision + this.#pending.length - this.#historyLimit;
      if (cut > this.#floor) {
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
    this.#afterCommit = [];
  }

  /**
   * Runs `fn` in the group transaction of this event-loop turn (opened by
   * the first such write, committed by {@linkcode #flushGroup} on the next
   * turn or before any other write), inside its own savepoint: a write that
   * throws is undone alone. Without group commit, a plain {@linkcode #tx}.
   */
  #grouped<T>(what: string, fn: () => T): T {
    if (!this.#groupCommit) return this.#tx(what, fn);
    if (this.#group === undefined) {
      try {
        this.#db.exec("BEGIN IMMEDIATE");
      } catch (err) {
        throw storeError(err, what);
      }
      this.#pending = [];
      this.#afterCommit = [];
      const done = Promise.withResolvers<void>();
      // Marked handled here: a caller that never asks still sees nothing unhandled.
      done.promise.catch(() => {});
      this.#group = { done, timer: setTimeout(() => this.#flushGroup(), 0) };
    }
    const marks = [this.#pending.length, this.#afterCommit.length] as const;
    try {
      this.#db.exec("SAVEPOINT grouped");
      const result = fn();
      this.#db.exec("RELEASE grouped");
      return result;
    } catch (err) {
      try {
        this.#db.exec("ROLLBACK TO grouped");
        this.#db.exec("RELEASE grouped");
      } catch (undoErr) {
        this.#logger?.error("Undoing a grouped write failed: {error}", { error: undoErr });
      }
      this.#pending.length = marks[0];
      this.#afterCommit.length = marks[1];
      throw storeError(err, what);
    }
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
      group.done.reject(storeError(err, "commit the writes of this moment"));
      return;
    }
    this.#published();
    group.done.resolve();
  }

  committed(): Promise<void> {
    return this.#group?.done.promise ?? Promise.resolve();
  }

  /** After a commit: the new revision, in-memory changes, then listeners. */
  #published(): void {
    const events = this.#pending;
    const after = this.#afterCommit;
    this.#pending = [];
    this.#afterCommit = [];
    if (events.length > 0) {
      this.#revision = events[events.length - 1]!.revision;
      const cut = this.#revision - this.#historyLimit;
      if (cut > this.#floor) this.#floor = cut;
    }
    for (const f of after) f();
    for (const event of events) {
      for (const listener of this.#listeners) {
        try {
          listener(event);
        } catch (err) {
          this.#logger?.error("A store listener failed: {error}", { error: err });
        }
      }
    }
  }

  /** Appends a peer change to the log inside the running transaction. */
  #emit(
    change:
      | { type: "upsert"; peer: PeerEntry }
      | { type: "delete"; kind: PeerEntry["kind"]; name: string; publicKey: string },
  ): void {
    const revision = this.#revision + this.#pending.length + 1;
    const event: WatchEvent = { ...change, revision } as WatchEvent;
    this.#stmt("INSERT INTO cluster_events (revision, event) VALUES (?, ?)").run(
      revision,
      JSON.stringify(event),
    );
    this.#pending.push(event);
    if (change.type === "upsert") {
      this.#afterCommit.push(() =>
        this.#peers.set(peerKey(change.peer.kind, change.peer.name), change.peer)
      );
    } else {
      this.#afterCommit.push(() => this.#peers.delete(peerKey(change.kind, change.name)));
    }
  }

  revision(): number {
    return this.#revision;
  }

  snapshot(): PeerSnapshot {
    return { revision: this.#revision, peers: [...this.#peers.values()] };
  }

  eventsSince(revision: number): readonly WatchEvent[] | undefined {
    if (revision < this.#floor || revision > this.#revision) return undefined;
    const rows = this.#stmt(
      "SELECT event FROM cluster_events WHERE revision > ? ORDER BY revision",
    ).all(revision) as unknown as { event: string }[];
    const events = rows.map((r) => JSON.parse(r.event) as WatchEvent);
    // A gap means the log lost rows: a snapshot is the only safe answer.
    if (events.length !== this.#revision - revision) return undefined;
    return events;
  }

  listen(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  // --- tokens ---

  putToken(
    input: { id: string; kind: "admin" | "join"; secret: string; now: number },
  ): TokenRecord {
    return this.#tx("store a token", () => {
      this.#stmt("DELETE FROM cluster_tokens WHERE id = ? OR hash = ?").run(
        input.id,
        hashSecret(input.secret),
      );
      this.#stmt(
        "INSERT INTO cluster_tokens (id, kind, hash, expires_at, single_use, used, created_at) VALUES (?, ?, ?, NULL, 0, 0, ?)",
      ).run(input.id, input.kind, hashSecret(input.secret), input.now);
      return this.#token(input.id)!;
    });
  }

  createToken(
    input: { secret: string; now: number; ttlMs?: number; singleUse?: boolean },
  ): TokenRecord {
    return this.#tx("create a token", () => {
      const id = newTokenId();
      this.#stmt(
        "INSERT INTO cluster_tokens (id, kind, hash, expires_at, single_use, used, created_at) VALUES (?, 'join', ?, ?, ?, 0, ?)",
      ).run(
        id,
        hashSecret(input.secret),
        input.ttlMs === undefined ? null : input.now + input.ttlMs,
        input.singleUse ? 1 : 0,
        input.now,
      );
      return this.#token(id)!;
    });
  }

  #token(id: string): TokenRecord | undefined {
    const row = this.#stmt(
      "SELECT id, kind, expires_at, single_use, used, created_at FROM cluster_tokens WHERE id = ?",
    ).get(id) as TokenRow | undefined;
    return row === undefined ? undefined : tokenFromRow(row);
  }

  findToken(secret: string): TokenRecord | undefined {
    const row = this.#stmt(
      "SELECT id, kind, expires_at, single_use, used, created_at FROM cluster_tokens WHERE hash = ?",
    ).get(hashSecret(secret)) as TokenRow | undefined;
    return row === undefined ? undefined : tokenFromRow(row);
  }

  listTokens(): readonly TokenRecord[] {
    const rows = this.#stmt(
      "SELECT id, kind, expires_at, single_use, used, created_at FROM cluster_tokens WHERE kind = 'join' ORDER BY created_at, id",
    ).all() as unknown as TokenRow[];
    return rows.map(tokenFromRow);
  }

  revokeToken(id: string): void {
    this.#tx("revoke a token", () => {
      const r = this.#stmt("DELETE FROM cluster_tokens WHERE id = ? AND kind = 'join'").run(id);
      if (Number(r.changes) === 0) {
        throw new NotFoundError(`Cannot revoke join token ${id}: no such token`);
      }
    });
  }

  getFlag(key: string): string | undefined {
    return this.#meta(`flag:${key}`);
  }

  setFlag(key: string, value: string): void {
    this.#tx("store a flag", () => this.#setMeta(`flag:${key}`, value));
  }

  initFlag(key: string, value: string): boolean {
    return this.#tx("store a flag", () => {
      if (this.#meta(`flag:${key}`) !== undefined) return false;
      this.#setMeta(`flag:${key}`, value);
      return true;
    });
  }

  settle(): void {}

  /**
   * Moves the revision forward to `to` and forgets the replay history, so
   * that every watcher resumes from a full snapshot: for a store restored
   * from a backup, whose revisions nodes have already seen past.
   */
  advanceRevision(to: number): void {
    if (to <= this.#revision) return;
    this.#tx("advance the revision", () => {
      this.#stmt("DELETE FROM cluster_events").run();
      this.#setMeta("revision", String(to));
      this.#setMeta("history_floor", String(to));
      this.#afterCommit.push(() => {
        this.#revision = to;
        this.#floor = to;
      });
    });
  }

  stats(): StoreStats {
    return { conflicts: 0 };
  }

  dump(): StoreDump {
    const flags: Record<string, string> = {};
    for (
      const r of this.#stmt("SELECT key, value FROM cluster_meta WHERE key LIKE 'flag:%'")
        .all() as unknown as { key: string; value: string }[]
    ) flags[r.key.slice("flag:".length)] = r.value;
    const tokens = (this.#stmt(
      "SELECT id, kind, hash, expires_at, single_use, used, created_at FROM cluster_tokens ORDER BY created_at, id",
    ).all() as unknown as (TokenRow & { hash: string })[]).map((r) => ({
      ...tokenFromRow(r),
      hash: r.hash,
    }));
    const nodes = (this.#stmt("SELECT * FROM cluster_nodes ORDER BY registered_at, name")
      .all() as unknown as (NodeRow & { credential_hash: string })[]).map((r) => ({
        ...nodeFromRow(r),
        credentialHash: r.credential_hash,
      }));
    const quarantine = (this.#stmt(
      "SELECT subnet, name, public_key, release_at FROM cluster_quarantine ORDER BY subnet",
    ).all() as unknown as {
      subnet: string;
      name: string;
      public_key: string;
      release_at: number;
    }[])
      .map((r) => ({
        subnet: r.subnet,
        name: r.name,
        publicKey: r.public_key,
        releaseAt: r.release_at,
      }));
    return { pools: this.pools, flags, tokens, nodes, clients: this.listClients(), quarantine };
  }

  // --- nodes ---

  #nodeRow(name: string): NodeRow | undefined {
    return this.#stmt("SELECT * FROM cluster_nodes WHERE name = ?").get(name) as
      | NodeRow
      | undefined;
  }

  /** Who else holds a public key (a node or a client), if anyone. */
  #keyHolder(publicKey: string): { kind: "node" | "client"; name: string } | undefined {
    const n = this.#stmt("SELECT name FROM cluster_nodes WHERE public_key = ?").get(publicKey) as
      | { name: string }
      | undefined;
    if (n !== undefined) return { kind: "node", name: n.name };
    const c = this.#stmt("SELECT name FROM cluster_clients WHERE public_key = ?").get(publicKey) as
      | { name: string }
      | undefined;
    if (c !== undefined) return { kind: "client", name: c.name };
    return undefined;
  }

  /** Checks a join token again inside the transaction and uses it up if single-use. */
  #consumeJoinToken(tokenId: string, now: number): void {
    const t = this.#token(tokenId);
    if (t === undefined || t.kind !== "join") {
      throw new AuthError(`Cannot register: join token ${tokenId} was revoked`);
    }
    if (t.expiresAt !== null && t.expiresAt <= now) {
      throw new AuthError(`Cannot register: join token ${t.id} has expired`);
    }
    if (t.singleUse) {
      if (t.used) {
        throw new AuthError(`Cannot register: single-use join token ${t.id} was already used`);
      }
      this.#stmt("UPDATE cluster_tokens SET used = 1 WHERE id = ?").run(t.id);
    }
  }

  /** Refuses an endpoint inside the cluster's own pools: peers would route to it through the mesh. */
  #checkEndpoint(name: string, endpoint: string): void {
    const host = endpoint.startsWith("[")
      ? endpoint.slice(1, endpoint.lastIndexOf("]"))
      : endpoint.slice(0, endpoint.lastIndexOf(":"));
    const pool = this.#ipam.poolContaining(host);
    if (pool !== undefined) {
      throw new RangeError(
        `Cannot register node ${name}: endpoint ${endpoint} is inside the cluster pool ${pool}; an endpoint must be an underlay address`,
      );
    }
  }

  /** Returns quarantined subnets whose grace period ended to the pool. */
  #releaseQuarantine(now: number): number {
    const rows = this.#stmt("SELECT subnet FROM cluster_quarantine WHERE release_at <= ?").all(
      now,
    ) as unknown as { subnet: string }[];
    for (const r of rows) this.#ipam.releaseSubnet(r.subnet);
    if (rows.length > 0) {
      this.#stmt("DELETE FROM cluster_quarantine WHERE release_at <= ?").run(now);
    }
    return rows.length;
  }

  registerNode(
    input: { name: string; publicKey: string; endpoint: string },
    options: { principal: Principal; credential: string; now: number },
  ): RegisterOutcome {
    const { name, publicKey, endpoint } = input;
    const { principal, now } = options;
    const credentialHash = hashSecret(options.credential);
    return this.#grouped(`register node ${name}`, () => {
      this.#checkEndpoint(name, endpoint);
      if (principal.kind === "join") this.#consumeJoinToken(principal.tokenId, now);
      if (principal.kind === "node" && principal.name !== name) {
        throw new AuthError(
          `Cannot register node ${name}: the credential of node ${principal.name} may register only that node`,
          { missing: false },
        );
      }
      const existing = this.#nodeRow(name);
      if (existing !== undefined) {
        checkReregistration(name, principal, existing.credential_hash);
        const before = nodeFromRow(existing);
        if (existing.public_key !== publicKey) {
          const holder = this.#keyHolder(publicKey);
          if (holder !== undefined) {
            throw new ConflictError(
              `Cannot register node ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
            );
          }
        }
        this.#stmt(
          "UPDATE cluster_nodes SET public_key = ?, endpoint = ?, credential_hash = ?, last_seen_at = ? WHERE name = ?",
        ).run(publicKey, endpoint, credentialHash, now, name);
        const node: NodeInfo = { ...before, publicKey, endpoint, lastSeenAt: now };
        if (before.publicKey !== publicKey) {
          this.#emit({ type: "delete", kind: "node", name, publicKey: before.publicKey });
          this.#emit({ type: "upsert", peer: nodePeer(node) });
        } else if (before.endpoint !== endpoint) {
          this.#emit({ type: "upsert", peer: nodePeer(node) });
        }
        return { node, created: false };
      }
      const holder = this.#keyHolder(publicKey);
      if (holder !== undefined) {
        throw new ConflictError(
          `Cannot register node ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
        );
      }
      // A node coming back within its grace period gets its old subnets again.
      const reclaimed = this.#stmt(
        "SELECT subnet, family FROM cluster_quarantine WHERE name = ? AND public_key = ? AND release_at > ?",
      ).all(name, publicKey, now) as unknown as { subnet: string; family: number }[];
      this.#releaseQuarantine(now);
      const subnets: string[] = [];
      for (const family of this.#ipam.podFamilies()) {
        const back = reclaimed.find((r) => r.family === family);
        if (back !== undefined) {
          this.#stmt("DELETE FROM cluster_quarantine WHERE subnet = ?").run(back.subnet);
          subnets.push(back.subnet);
        } else {
          subnets.push(this.#allocateSubnet(family));
        }
      }
      this.#stmt(
        "INSERT INTO cluster_nodes (name, public_key, endpoint, subnets, credential_hash, registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ).run(name, publicKey, endpoint, JSON.stringify(subnets), credentialHash, now, now);
      const node: NodeInfo = {
        name,
        publicKey,
        endpoint,
        subnets,
        registeredAt: now,
        lastSeenAt: now,
      };
      this.#emit({ type: "upsert", peer: nodePeer(node) });
      return { node, created: true };
    });
  }

  #allocateSubnet(family: 4 | 6): string {
    try {
      return this.#ipam.allocateSubnet(family);
    } catch (err) {
      if (!(err instanceof PoolExhaustedError)) throw err;
      const waiting = this.#stmt(
        "SELECT count(*) AS n, min(release_at) AS next FROM cluster_quarantine WHERE family = ?",
      ).get(family) as { n: number; next: number | null };
      const pool = this.#ipam.podPool(family);
      const inUse = this.#ipam.usage().find((u) => u.pool === "pod" && u.family === family);
      const grace = waiting.n > 0 && waiting.next !== null
        ? `; ${waiting.n} of them wait out their grace period, the first until ${
          new Date(waiting.next).toISOString()
        }`
        : "";
      throw new PoolExhaustedError(
        `Cannot allocate a node subnet from ${pool}: the pool is exhausted (${
          inUse?.used ?? "?"
        } of ${inUse?.total ?? "?"} subnets taken${grace})`,
      );
    }
  }

  findNodeByCredential(credential: string): NodeInfo | undefined {
    const row = this.#stmt("SELECT * FROM cluster_nodes WHERE credential_hash = ?").get(
      hashSecret(credential),
    ) as NodeRow | undefined;
    return row === undefined ? undefined : nodeFromRow(row);
  }

  getNode(name: string): NodeInfo | undefined {
    const row = this.#nodeRow(name);
    return row === undefined ? undefined : nodeFromRow(row);
  }

  listNodes(): readonly NodeInfo[] {
    const rows = this.#stmt("SELECT * FROM cluster_nodes ORDER BY registered_at, name")
      .all() as unknown as NodeRow[];
    return rows.map(nodeFromRow);
  }

  resetNode(name: string, _now: number): NodeInfo {
    return this.#tx(`reset node ${name}`, () => {
      const r = this.#stmt("UPDATE cluster_nodes SET credential_hash = ? WHERE name = ?").run(
        resetCredentialHash(),
        name,
      );
      if (Number(r.changes) === 0) {
        throw new NotFoundError(`Cannot reset node ${name}: it is not registered`);
      }
      return nodeFromRow(this.#nodeRow(name)!);
    });
  }

  heartbeat(name: string, now: number): NodeInfo {
    return this.#grouped(`renew the lease of node ${name}`, () => {
      const r = this.#stmt("UPDATE cluster_nodes SET last_seen_at = ? WHERE name = ?").run(
        now,
        name,
      );
      if (Number(r.changes) === 0) {
        throw new NotFoundError(`Cannot renew the lease of node ${name}: it is not registered`);
      }
      return nodeFromRow(this.#nodeRow(name)!);
    });
  }

  /** Deletes a node row and quarantines its subnets, inside a transaction. */
  #dropNode(row: NodeRow, now: number): void {
    const node = nodeFromRow(row);
    this.#stmt("DELETE FROM cluster_nodes WHERE name = ?").run(node.name);
    for (const subnet of node.subnets) {
      this.#stmt(
        "INSERT INTO cluster_quarantine (subnet, family, name, public_key, release_at) VALUES (?, ?, ?, ?, ?)",
      ).run(subnet, subnet.includes(":") ? 6 : 4, node.name, node.publicKey, now + this.#graceMs);
    }
    this.#emit({ type: "delete", kind: "node", name: node.name, publicKey: node.publicKey });
  }

  removeNode(name: string, now: number): void {
    this.#tx(`remove node ${name}`, () => {
      const row = this.#nodeRow(name);
      if (row === undefined) {
        throw new NotFoundError(`Cannot remove node ${name}: it is not registered`);
      }
      this.#dropNode(row, now);
    });
  }

  expire(now: number, leaseMs: number): readonly string[] {
    return this.#tx("expire leases", () => {
      const rows = this.#stmt("SELECT * FROM cluster_nodes WHERE last_seen_at < ?").all(
        now - leaseMs,
      ) as unknown as NodeRow[];
      for (const row of rows) this.#dropNode(row, now);
      this.#releaseQuarantine(now);
      return rows.map((r) => r.name);
    });
  }

  // --- clients ---

  addClient(input: { name: string; publicKey: string }, now: number): ClientInfo {
    const { name, publicKey } = input;
    return this.#tx(`add client ${name}`, () => {
      if (this.#ipam.clientFamilies().length === 0) {
        throw new ConflictError(
          `Cannot add client ${name}: the cluster has no client pool (start the manager with --client-cidr)`,
        );
      }
      const existing = this.#stmt("SELECT * FROM cluster_clients WHERE name = ?").get(name) as
        | ClientRow
        | undefined;
      if (existing !== undefined) {
        throw new ConflictError(`Cannot add client ${name}: a client of that name exists`);
      }
      const holder = this.#keyHolder(publicKey);
      if (holder !== undefined) {
        throw new ConflictError(
          `Cannot add client ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
        );
      }
      const addresses = this.#ipam.clientFamilies().map((f) => this.#ipam.allocateClient(f));
      this.#stmt(
        "INSERT INTO cluster_clients (name, public_key, addresses, created_at) VALUES (?, ?, ?, ?)",
      ).run(name, publicKey, JSON.stringify(addresses), now);
      const client: ClientInfo = { name, publicKey, addresses, createdAt: now };
      this.#emit({ type: "upsert", peer: clientPeer(client) });
      return client;
    });
  }

  getClient(name: string): ClientInfo | undefined {
    const row = this.#stmt("SELECT * FROM cluster_clients WHERE name = ?").get(name) as
      | ClientRow
      | undefined;
    return row === undefined ? undefined : clientFromRow(row);
  }

  listClients(): readonly ClientInfo[] {
    const rows = this.#stmt("SELECT * FROM cluster_clients ORDER BY created_at, name")
      .all() as unknown as ClientRow[];
    return rows.map(clientFromRow);
  }

  removeClient(name: string): void {
    this.#tx(`remove client ${name}`, () => {
      const row = this.#stmt("SELECT * FROM cluster_clients WHERE name = ?").get(name) as
        | ClientRow
        | undefined;
      if (row === undefined) {
        throw new NotFoundError(`Cannot remove client ${name}: no such client`);
      }
      const client = clientFromRow(row);
      this.#stmt("DELETE FROM cluster_clients WHERE name = ?").run(name);
      for (const address of client.addresses) this.#ipam.releaseClient(address);
      this.#emit({ type: "delete", kind: "client", name, publicKey: client.publicKey });
    });
  }

  usage(): readonly PoolUsage[] {
    return this.#ipam.usage();
  }

  ping(): void {
    this.#stmt("SELECT value FROM cluster_meta WHERE key = 'revision' OR key = 'pools' LIMIT 1")
      .get();
  }

  close(): void {
    this.#flushGroup();
    this.#listeners.clear();
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
