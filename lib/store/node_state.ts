/**
 * The node manager's pod records, in SQLite under the state dir (tmpfs in
 * production: gone after a reboot, when every pod is gone anyway). A record
 * is written before anything is created for a pod (phase "adding") and
 * marked "ready" when ADD finished, so a restart after kill -9 knows what to
 * finish or roll back. Workloads that bring their own WireGuard interface
 * have records of their own, written ahead the same way. Address
 * reservations live in the same database (lib/ipam).
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
  /**
   * The key the pod's interface is being given (a rotation under way):
   * written before the interface takes it, so a restart in between tells
   * its own pod's new key from a stranger's and finishes the rotation.
   */
  readonly nextPublicKey?: string;
  /** When the pod's key was last rotated (milliseconds since the epoch); absent: never. */
  readonly keyedAt?: number;
}

/**
 * Where a workload that brings its own interface stands: addresses
 * allocated; its key being set as a peer of the node interface (written
 * before the peer is); registered; being released (written before the peer
 * is removed, so a restart finishes the release instead of restoring it).
 */
export type WorkloadPhase = "allocated" | "registering" | "ready" | "releasing";

/** A workload that brings its own WireGuard interface, by its name on this node. */
export interface WorkloadRecord {
  readonly name: string;
  readonly phase: WorkloadPhase;
  /** Its addresses, no prefix, IPv4 first. */
  readonly addresses: readonly string[];
  /** Its public key, from phase "registering" on. */
  readonly publicKey?: string;
  /** The UDP port of its socket on the node's loopback, when it said it has one there. */
  readonly endpointPort?: number;
  readonly createdAt: number;
}

const SCHEMA_VERSION = 4;
const WORKLOAD_PHASES: readonly string[] = ["allocated", "registering", "ready", "releasing"];

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
  next_key?: string | null;
  keyed_at?: number | null;
}

interface WorkloadRow {
  name: string;
  phase: string;
  addresses: string;
  public_key: string | null;
  endpoint_port: number | null;
  created_at: number;
}

function toWorkload(r: WorkloadRow): WorkloadRecord {
  if (!WORKLOAD_PHASES.includes(r.phase)) {
    throw new StoreCorruptError(`Cannot read workload ${r.name}: phase "${r.phase}"`);
  }
  return {
    name: r.name,
    phase: r.phase as WorkloadPhase,
    addresses: JSON.parse(r.addresses) as string[],
    ...(r.public_key !== null ? { publicKey: r.public_key } : {}),
    ...(r.endpoint_port !== null ? { endpointPort: r.endpoint_port } : {}),
    createdAt: r.created_at,
  };
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
    ...(r.next_key != null ? { nextPublicKey: r.next_key } : {}),
    ...(r.keyed_at != null ? { keyedAt: r.keyed_at } : {}),
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
  readonly #putWorkload: StatementSync;
  readonly #getWorkload: StatementSync;
  readonly #delWorkload: StatementSync;
  readonly #allWorkloads: StatementSync;

  constructor(db: DatabaseSync) {
    this.db = db;
    db.exec(`CREATE TABLE IF NOT EXISTS node_schema (version INTEGER NOT NULL)`);
    const v = db.prepare("SELECT version FROM node_schema").get() as
      | { version: number }
      | undefined;
    const fresh = v === undefined;
    if (v === undefined) {
      db.exec(`INSERT INTO node_schema (version) VALUES (${SCHEMA_VERSION})`);
    } else if (v.version >= 1 && v.version < SCHEMA_VERSION) {
      // Version 1 had no pod names (the column is added below, empty);
      // versions 1 and 2 had no workloads (the table is created below);
      // versions before 4 had no pod key rotation (its columns are added below).
    } else if (v.version !== SCHEMA_VERSION) {
      throw new StoreCorruptError(
        `Cannot use the node state: schema version ${v.version}, this wgcni knows ${SCHEMA_VERSION}`,
      );
    }
    db.exec(`CREATE TABLE IF NOT EXISTS pods (
      container_id TEXT NOT NULL, ifname TEXT NOT NULL, netns TEXT NOT NULL, phase TEXT NOT NULL,
      wg_name TEXT NOT NULL UNIQUE, public_key TEXT NOT NULL, addresses TEXT NOT NULL,
      listen_port INTEGER NOT NULL, created_at INTEGER NOT NULL, pod_name TEXT,
      next_key TEXT, keyed_at INTEGER,
      PRIMARY KEY (container_id, ifname))`);
    if (!fresh && v.version === 1) db.exec("ALTER TABLE pods ADD COLUMN pod_name TEXT");
    if (!fresh && v.version < 4) {
      db.exec("ALTER TABLE pods ADD COLUMN next_key TEXT");
      db.exec("ALTER TABLE pods ADD COLUMN keyed_at INTEGER");
    }
    db.exec(`CREATE TABLE IF NOT EXISTS workloads (
      name TEXT PRIMARY KEY, phase TEXT NOT NULL, addresses TEXT NOT NULL,
      public_key TEXT UNIQUE, endpoint_port INTEGER, created_at INTEGER NOT NULL)`);
    if (!fresh && v.version !== SCHEMA_VERSION) {
      db.exec(`UPDATE node_schema SET version = ${SCHEMA_VERSION}`);
    }
    db.exec(`CREATE TABLE IF NOT EXISTS node_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`);
    this.#put = db.prepare(
      `INSERT OR REPLACE INTO pods (container_id, ifname, netns, phase, wg_name, public_key, addresses, listen_port, created_at, pod_name, next_key, keyed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#get = db.prepare(`SELECT * FROM pods WHERE container_id = ? AND ifname = ?`);
    this.#del = db.prepare(`DELETE FROM pods WHERE container_id = ? AND ifname = ?`);
    this.#all = db.prepare(`SELECT * FROM pods ORDER BY created_at, container_id, ifname`);
    this.#getMeta = db.prepare(`SELECT value FROM node_meta WHERE key = ?`);
    this.#putMeta = db.prepare(`INSERT OR REPLACE INTO node_meta VALUES (?, ?)`);
    this.#putWorkload = db.prepare(
      // An upsert by name: OR REPLACE would also delete another workload holding the same key.
      `INSERT INTO workloads (name, phase, addresses, public_key, endpoint_port, created_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET phase = excluded.phase, addresses = excluded.addresses,
       public_key = excluded.public_key, endpoint_port = excluded.endpoint_port, created_at = excluded.created_at`,
    );
    this.#getWorkload = db.prepare(`SELECT * FROM workloads WHERE name = ?`);
    this.#delWorkload = db.prepare(`DELETE FROM workloads WHERE name = ?`);
    this.#allWorkloads = db.prepare(`SELECT * FROM workloads ORDER BY created_at, name`);
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
        p.nextPublicKey ?? null,
        p.keyedAt ?? null,
      )
    );
  }

  delete(containerId: string, ifname: string): void {
    this.#write(() => this.#del.run(containerId, ifname));
  }

  all(): PodRecord[] {
    return (this.#all.all() as unknown as Row[]).map(toRecord);
  }

  workload(name: string): WorkloadRecord | undefined {
    const r = this.#getWorkload.get(name) as WorkloadRow | undefined;
    return r && toWorkload(r);
  }

  /** Writes a workload's record; a public key another workload has is refused by the database. */
  putWorkload(w: WorkloadRecord): void {
    this.#write(() =>
      this.#putWorkload.run(
        w.name,
        w.phase,
        JSON.stringify(w.addresses),
        w.publicKey ?? null,
        w.endpointPort ?? null,
        w.createdAt,
      )
    );
  }

  deleteWorkload(name: string): void {
    this.#write(() => this.#delWorkload.run(name));
  }

  workloads(): WorkloadRecord[] {
    return (this.#allWorkloads.all() as unknown as WorkloadRow[]).map(toWorkload);
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
