/**
 * The node manager's pod records, in SQLite under the state dir (tmpfs in
 * production: gone after a reboot, when every pod is gone anyway). A record
 * is written before anything is created for a pod (phase "adding") and
 * marked "ready" when ADD finished, so a restart after kill -9 knows what to
 * finish or roll back. Address reservations live in the same database (lib/ipam).
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import { NoSpaceError, StoreCorruptError } from "../errors.ts";

export type PodPhase = "adding" | "ready";

/** One attachment (container id, ifname) and what was made for it. */
export interface PodRecord {
  readonly containerId: string;
  readonly ifname: string;
  readonly netns: string;
  readonly phase: PodPhase;
  /** The WireGuard interface's creation name (its control socket name). */
  readonly wgName: string;
  readonly publicKey: string;
  /** The pod's addresses, no prefix, IPv4 first. */
  readonly addresses: readonly string[];
  /** The pod interface's UDP port in the node namespace; 0 until known. */
  readonly listenPort: number;
  readonly createdAt: number;
  /** The name the runtime gave the pod (`NAMESPACE/NAME` from CNI_ARGS), when it said. */
  readonly podName?: string;
}

const SCHEMA_VERSION = 2;

interface Row {
  container_id: string;
  ifname: string;
  netns: string;
  phase: string;
  wg_name: string;
  public_key: string;
  addresses: string;
  listen_port: number;
  created_at: number;
  pod_name: string | null;
}

function toRecord(r: Row): PodRecord {
  if (r.phase !== "adding" && r.phase !== "ready") {
    throw new StoreCorruptError(
      `Cannot read pod ${r.container_id}/${r.ifname}: phase "${r.phase}"`,
    );
  }
  return {
    containerId: r.container_id,
    ifname: r.ifname,
    netns: r.netns,
    phase: r.phase,
    wgName: r.wg_name,
    publicKey: r.public_key,
    addresses: JSON.parse(r.addresses) as string[],
    listenPort: r.listen_port,
    createdAt: r.created_at,
    ...(r.pod_name !== null && r.pod_name !== undefined ? { podName: r.pod_name } : {}),
  };
}

/** Pod records and a small key/value table of node facts. */
export class NodeStateStore {
  readonly db: DatabaseSync;
  readonly #put: StatementSync;
  readonly #get: StatementSync;
  readonly #del: StatementSync;
  readonly #all: StatementSync;
  readonly #getMeta: StatementSync;
  readonly #putMeta: StatementSync;

  constructor(db: DatabaseSync) {
    this.db = db;
    db.exec(`CREATE TABLE IF NOT EXISTS node_schema (version INTEGER NOT NULL)`);
    const v = db.prepare("SELECT version FROM node_schema").get() as
      | { version: number }
      | undefined;
    const fresh = v === undefined;
    if (v === undefined) {
      db.exec(`INSERT INTO node_schema (version) VALUES (${SCHEMA_VERSION})`);
    } else if (v.version === 1) {
      // Version 1 had no pod names; the column is added below, empty.
    } else if (v.version !== SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot use the node state: schema version ${v.version}, this wgcni knows ${SCHEMA_VERSION}`,
      );
    }
    db.exec(`CREATE TABLE IF NOT EXISTS pods (
      container_id TEXT NOT NULL, ifname TEXT NOT NULL, netns TEXT NOT NULL, phase TEXT NOT NULL,
      wg_name TEXT NOT NULL UNIQUE, public_key TEXT NOT NULL, addresses TEXT NOT NULL,
      listen_port INTEGER NOT NULL, created_at INTEGER NOT NULL, pod_name TEXT,
      PRIMARY KEY (container_id, ifname))`);
    if (!fresh && v.version === 1) {
      db.exec("ALTER TABLE pods ADD COLUMN pod_name TEXT");
      db.exec(`UPDATE node_schema SET version = ${SCHEMA_VERSION}`);
    }
    db.exec(`CREATE TABLE IF NOT EXISTS node_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
    this.#put = db.prepare(
      `INSERT OR REPLACE INTO pods (container_id, ifname, netns, phase, wg_name, public_key, addresses, listen_port, created_at, pod_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#get = db.prepare(`SELECT * FROM pods WHERE container_id = ? AND ifname = ?`);
    this.#del = db.prepare(`DELETE FROM pods WHERE container_id = ? AND ifname = ?`);
    this.#all = db.prepare(`SELECT * FROM pods ORDER BY created_at, container_id, ifname`);
    this.#getMeta = db.prepare(`SELECT value FROM node_meta WHERE key = ?`);
    this.#putMeta = db.prepare(`INSERT OR REPLACE INTO node_meta VALUES (?, ?)`);
  }

  /**
   * A failed write as the caller should see it: a full file system as
   * {@linkcode NoSpaceError} naming the state directory, anything else as it came.
   */
  #failure(err: unknown): unknown {
    if (err instanceof Error && /database or disk is full/.test(err.message)) {
      const file = this.db.location() ?? "the node state";
      const dir = file.replace(/\/[^/]*$/, "") || "/";
      return new NoSpaceError(`no space left on the state directory ${dir} (${err.message})`);
    }
    return err;
  }

  #write(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      throw this.#failure(err);
    }
  }

  get(containerId: string, ifname: string): PodRecord | undefined {
    const r = this.#get.get(containerId, ifname) as Row | undefined;
    return r && toRecord(r);
  }

  put(p: PodRecord): void {
    this.#write(() =>
      this.#put.run(
        p.containerId,
        p.ifname,
        p.netns,
        p.phase,
        p.wgName,
        p.publicKey,
        JSON.stringify(p.addresses),
        p.listenPort,
        p.createdAt,
        p.podName ?? null,
      )
    );
  }

  delete(containerId: string, ifname: string): void {
    this.#write(() => this.#del.run(containerId, ifname));
  }

  all(): PodRecord[] {
    return (this.#all.all() as unknown as Row[]).map(toRecord);
  }

  meta(key: string): string | undefined {
    return (this.#getMeta.get(key) as { value: string } | undefined)?.value;
  }

  setMeta(key: string, value: string): void {
    this.#write(() => this.#putMeta.run(key, value));
  }

  /**
   * Runs `fn` in one transaction: all its writes land, or none. A full disk
   * is a {@linkcode NoSpaceError}.
   */
  transaction<T>(fn: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const r = fn();
      this.db.exec("COMMIT");
      return r;
    } catch (err) {
      // SQLite has already ended the transaction after some errors (a full
      // disk among them); a second ROLLBACK would replace the cause.
      if (this.db.isTransaction) this.db.exec("ROLLBACK");
      throw this.#failure(err);
    }
  }
}
