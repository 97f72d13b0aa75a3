/**
 * The cluster store on etcd, for several cluster managers serving at once.
 *
 * Every piece of state is one key under a prefix (default `/wgcni/`):
 *
 *   meta/schema, meta/pools        schema version and the pools the cluster was made with
 *   flags/NAME                     bookkeeping flags (cluster id, bootstrapped)
 *   tokens/ID                      a token: kind, SHA-256 of its secret, expiry, use
 *   nodes/NAME                     a node: key, endpoint, subnets, credential hash
 *   leases/NAME                    when the node was last heard from (kept apart, so a
 *                                  heartbeat never conflicts with a registration)
 *   clients/NAME                   an external client and its addresses
 *   pubkeys/KEY                    who holds a public key (one key, one peer)
 *   alloc/CIDR                     a node subnet or client address and its holder, or a
 *                                  removed node's subnet waiting out its grace period
 *
 * Each replica mirrors the prefix in memory from one etcd watch, in revision
 * order; reads answer from the mirror and every committed change reaches the
 * watch hub from there, labelled with etcd's own revision, so a node can resume
 * on any replica. Writes are single etcd transactions that compare the
 * modification revision of every key they read (or that a new key does not
 * exist yet); when another writer got there first, the transaction changes
 * nothing, the mirror catches up, and the write is planned again from the new
 * state. There is no lock anywhere, and a replica that was paused writes only
 * what still holds.
 */
import { Buffer } from "node:buffer";
import { Etcd3, type IOptions } from "etcd3";
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
  bitsOf,
  type Cidr,
  cidrSize,
  contains,
  type Family,
  formatCidr,
  hostCidr,
  parseAddress,
  parseCidr,
} from "../ipam/mod.ts";
import {
  checkReregistration,
  clientPeer,
  type ClusterStore,
  type EventListener,
  hashSecret,
  newSecret,
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

/** The key layout this code reads and writes. */
export const ETCD_SCHEMA_VERSION = 1;

/** Where and how to reach etcd. */
export interface EtcdConnection {
  /** `http://HOST:PORT` or `https://HOST:PORT`, one per member. */
  readonly endpoints: readonly string[];
  /** Every key lives under this prefix (default `/wgcni/`). */
  readonly prefix?: string;
  /** PEM text: the CA that signed the members' certificates (turns on TLS). */
  readonly caCert?: string;
  /** PEM text of a client certificate and its key, for members that ask for one. */
  readonly clientCert?: string;
  readonly clientKey?: string;
  readonly username?: string;
  readonly password?: string;
  /** Time limit of one etcd request (default 5 s). */
  readonly requestTimeoutMs?: number;
}

/** Options of {@linkcode EtcdClusterStore.open}. */
export interface EtcdClusterStoreOptions extends EtcdConnection {
  readonly pools: PoolConfig;
  /** How long a removed node's subnets wait before they are handed out again (default 1 day). */
  readonly graceMs?: number;
  /** Peer changes kept in memory for replay (default 10,000). */
  readonly historyLimit?: number;
  readonly logger?: Logger;
}

/**
 * Reads `etcd://HOST:PORT[,HOST:PORT...]` (or `etcds://` for TLS). Throws
 * RangeError naming what is wrong.
 */
export function parseEtcdUrl(text: string): { endpoints: string[]; tls: boolean } {
  const m = /^(etcds?):\/\/(.+)$/.exec(text);
  if (m === null) {
    throw new RangeError(
      `Cannot use --store ${text}: expected etcd://HOST:PORT[,HOST:PORT...] (or etcds:// for TLS)`,
    );
  }
  const tls = m[1] === "etcds";
  const endpoints = m[2]!.replace(/\/+$/, "").split(",").map((hp) => {
    const ok = /^\[[0-9a-fA-F:.]+\]:\d{1,5}$/.test(hp) || /^[A-Za-z0-9.-]+:\d{1,5}$/.test(hp);
    if (!ok || Number(hp.slice(hp.lastIndexOf(":") + 1)) > 65535) {
      throw new RangeError(`Cannot use --store ${text}: "${hp}" is not HOST:PORT`);
    }
    return `${tls ? "https" : "http"}://${hp}`;
  });
  return { endpoints, tls };
}

interface Versioned<T> {
  readonly value: T;
  /** etcd's modification revision of the key. */
  readonly mod: number;
}

interface NodeRecord {
  readonly name: string;
  readonly publicKey: string;
  readonly endpoint: string;
  readonly subnets: readonly string[];
  readonly credentialHash: string;
  readonly registeredAt: number;
}

interface TokenValue extends TokenRecord {
  readonly hash: string;
}

/** A handed-out subnet or address: who holds it, or whose it was while it waits for reuse. */
type AllocValue =
  | { readonly owner: string }
  | {
    readonly quarantine: {
      readonly name: string;
      readonly publicKey: string;
      readonly releaseAt: number;
    };
  };

/** One step of a transaction. */
type Op = { readonly put: string; readonly value: string } | { readonly del: string };

/** A transaction: what must still hold, and what to write when it does. */
interface Plan {
  /** key → expected modification revision (0: the key must not exist). */
  readonly expect: Map<string, number>;
  readonly ops: Op[];
  /** Pool items this plan picked, kept from other plans of this process until it ends. */
  readonly claimed: string[];
}

/** A transaction that found nothing to do. */
const NOTHING = Symbol("nothing to write");

/** How long a write keeps trying while etcd does not answer (a member lost, an election). */
const UNAVAILABLE_BUDGET_MS = 20_000;
const MAX_ATTEMPTS = 50;

function bytesOf(kv: { key: Uint8Array | string; value?: Uint8Array | string | null }) {
  const dec = new TextDecoder();
  const key = typeof kv.key === "string" ? kv.key : dec.decode(kv.key);
  const v = kv.value ?? "";
  return { key, value: typeof v === "string" ? v : dec.decode(v) };
}

function endpointHost(endpoint: string): string {
  return endpoint.startsWith("[")
    ? endpoint.slice(1, endpoint.lastIndexOf("]"))
    : endpoint.slice(0, endpoint.lastIndexOf(":"));
}

/** The address itself, IPv4-mapped IPv6 read as IPv4; undefined when it does not parse. */
function addressOf(text: string): { family: Family; value: bigint } | undefined {
  try {
    const a = parseAddress(text);
    if (a.family === 6 && a.value >> 32n === 0xffffn) {
      return { family: 4, value: a.value & 0xffffffffn };
    }
    return a;
  } catch {
    return undefined;
  }
}

function samePools(a: PoolConfig, b: PoolConfig): boolean {
  return JSON.stringify([a.podCidrs, a.clientCidrs, a.nodeMaskV4, a.nodeMaskV6]) ===
    JSON.stringify([b.podCidrs, b.clientCidrs, b.nodeMaskV4, b.nodeMaskV6]);
}

/** One pool and the next index to try (next fit: cheap, and spreads concurrent requests). */
interface Slot {
  readonly kind: "pod" | "client";
  readonly text: string;
  readonly cidr: Cidr;
  /** Prefix of the items handed out: the node mask, or the full length for client addresses. */
  readonly itemPrefix: number;
  /** Indices never handed out (network and broadcast addresses of a client pool). */
  readonly first: bigint;
  readonly end: bigint;
  next: bigint;
}

function makeSlot(kind: "pod" | "client", text: string, itemPrefix: number): Slot {
  const cidr = parseCidr(text);
  const count = 1n << BigInt(itemPrefix - cidr.prefix);
  // A client pool keeps back its network and broadcast addresses, as the embedded store does.
  const reserve = kind === "client" && cidrSize(cidr) > 2n;
  const first = reserve ? 1n : 0n;
  const end = reserve && cidr.family === 4 ? count - 1n : count;
  return { kind, text, cidr, itemPrefix, first, end, next: first };
}

function itemAt(slot: Slot, index: bigint): string {
  const shift = BigInt(bitsOf(slot.cidr.family) - slot.itemPrefix);
  const base = slot.cidr.base + (index << shift);
  return slot.kind === "client"
    ? hostCidr(slot.cidr.family, base)
    : formatCidr({ family: slot.cidr.family, base, prefix: slot.itemPrefix });
}

/** A {@linkcode ClusterStore} on etcd. Open with {@linkcode EtcdClusterStore.open}. */
export class EtcdClusterStore implements ClusterStore {
  readonly pools: PoolConfig;
  readonly #client: Etcd3;
  readonly #prefix: string;
  readonly #graceMs: number;
  readonly #historyLimit: number;
  readonly #logger: Logger | undefined;
  readonly #slots: Slot[];
  readonly #listeners = new Set<EventListener>();

  // The mirror of the prefix.
  readonly #meta = new Map<string, Versioned<string>>();
  readonly #flags = new Map<string, Versioned<string>>();
  readonly #tokens = new Map<string, Versioned<TokenValue>>();
  readonly #tokenByHash = new Map<string, string>();
  readonly #nodes = new Map<string, Versioned<NodeRecord>>();
  readonly #nodeByCredential = new Map<string, string>();
  readonly #leases = new Map<string, Versioned<{ lastSeenAt: number }>>();
  readonly #clients = new Map<string, Versioned<ClientInfo>>();
  readonly #pubkeys = new Map<string, Versioned<string>>();
  readonly #allocs = new Map<string, Versioned<AllocValue>>();
  /** Items picked by transactions of this process still in flight. */
  readonly #claimed = new Set<string>();

  /** The etcd revision the mirror has applied. */
  #applied = 0;
  /** The revision of the last peer change (never below the revision the mirror was loaded at). */
  #revision = 0;
  /** Replay covers changes after this revision. */
  #floor = 0;
  readonly #log: WatchEvent[] = [];
  #waiters: { revision: number; resolve: () => void }[] = [];
  #watcher: { cancel(): Promise<void> } | undefined;
  #conflicts = 0;
  #closed = false;
  #reloading: Promise<void> | undefined;

  private constructor(client: Etcd3, options: EtcdClusterStoreOptions) {
    this.#client = client;
    this.pools = options.pools;
    this.#prefix = normalizePrefix(options.prefix);
    this.#graceMs = options.graceMs ?? 86_400_000;
    this.#historyLimit = options.historyLimit ?? 10_000;
    this.#logger = options.logger;
    this.#slots = [
      ...options.pools.podCidrs.map((text) => {
        const family = parseCidr(text).family;
        return makeSlot(
          "pod",
          text,
          family === 4 ? options.pools.nodeMaskV4 : options.pools.nodeMaskV6,
        );
      }),
      ...options.pools.clientCidrs.map((text) =>
        makeSlot("client", text, bitsOf(parseCidr(text).family))
      ),
    ];
  }

  /**
   * Connects, creates the layout under an empty prefix, loads the mirror and
   * starts following changes. Throws StoreCorruptError for a prefix that holds
   * something else (or another schema, or other pools while nodes exist) and
   * UnavailableError when etcd cannot be reached.
   */
  static async open(options: EtcdClusterStoreOptions): Promise<EtcdClusterStore> {
    const client = connect(options);
    const store = new EtcdClusterStore(client, options);
    try {
      await store.#init();
      await store.#load();
      store.#checkPools();
      await store.#follow();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  // --- the mirror ---

  async #init(): Promise<void> {
    const p = this.#prefix;
    const present = await this.#call(
      "read the store",
      () => this.#client.getAll().prefix(p).limit(2).keys(),
    );
    const schemaKey = p + "meta/schema";
    if (present.length > 0 && !present.includes(schemaKey)) {
      const schema = await this.#call("read the store", () => this.#client.get(schemaKey).string());
      if (schema === null) {
        throw new StoreCorruptError(
          `Cannot open the etcd store under ${p}: it holds keys but no schema record (an interrupted migration, or data of something else); empty the prefix or choose another with --etcd-prefix`,
        );
      }
    }
    const r = await this.#call(
      "create the store",
      () =>
        this.#client.if(schemaKey, "Create", "==", 0)
          .then(
            this.#client.put(schemaKey).value(String(ETCD_SCHEMA_VERSION)),
            this.#client.put(p + "meta/pools").value(JSON.stringify(this.pools)),
          ).commit(),
    );
    if (r.succeeded) return;
    const schema = await this.#call("read the store", () => this.#client.get(schemaKey).string());
    if (schema !== String(ETCD_SCHEMA_VERSION)) {
      throw new StoreCorruptError(
        `Cannot open the etcd store under ${p}: its schema version is ${schema}, this wgcni reads ${ETCD_SCHEMA_VERSION}`,
      );
    }
  }

  /** Reads the whole prefix into the mirror (replacing it) and returns the revision read at. */
  async #load(): Promise<number> {
    const res = await this.#call(
      "read the store",
      () => this.#client.getAll().prefix(this.#prefix).exec(),
    );
    const revision = Number(res.header.revision);
    for (
      const m of [
        this.#meta,
        this.#flags,
        this.#tokens,
        this.#tokenByHash,
        this.#nodes,
        this.#nodeByCredential,
        this.#leases,
        this.#clients,
        this.#pubkeys,
        this.#allocs,
      ]
    ) m.clear();
    try {
      for (const kv of res.kvs) {
        const { key, value } = bytesOf(kv);
        this.#put(key.slice(this.#prefix.length), value, Number(kv.mod_revision));
      }
    } catch (err) {
      throw new StoreCorruptError(
        `Cannot open the etcd store under ${this.#prefix}: a key does not read back (${
          (err as Error).message
        })`,
      );
    }
    const stored = this.#meta.get("pools");
    if (stored !== undefined) {
      const before = JSON.parse(stored.value) as PoolConfig;
      if (
        !samePools(before, this.pools) &&
        this.#nodes.size + this.#clients.size + this.#allocs.size > 0
      ) {
        throw new StoreCorruptError(
          `Cannot open the etcd store with pod pools ${
            this.pools.podCidrs.join(", ")
          }: it was created with ${before.podCidrs.join(", ")} (client pools ${
            before.clientCidrs.join(", ") || "none"
          }, masks /${before.nodeMaskV4} and /${before.nodeMaskV6}) and holds nodes or clients; changing the pools of a running cluster is not supported`,
        );
      }
    }
    this.#applied = revision;
    this.#revision = Math.max(this.#revision, revision);
    this.#floor = revision;
    this.#log.length = 0;
    return revision;
  }

  /** Refuses a store whose allocations lost what its nodes and clients hold. */
  #checkPools(): void {
    const holds = (cidr: string, owner: string) => {
      const a = this.#allocs.get(cidr)?.value;
      if (a === undefined || !("owner" in a) || a.owner !== owner) {
        throw new StoreCorruptError(
          `Cannot open the etcd store: ${cidr} of ${
            owner.replace("/", " ")
          } is not allocated to it`,
        );
      }
    };
    for (const { value: n } of this.#nodes.values()) {
      for (const s of n.subnets) holds(s, `node/${n.name}`);
    }
    for (const { value: c } of this.#clients.values()) {
      for (const a of c.addresses) holds(a, `client/${c.name}`);
    }
  }

  /** Follows every change after the loaded revision; reloads when etcd compacted past it. */
  async #follow(): Promise<void> {
    const watcher = await this.#client.watch().prefix(this.#prefix).withPreviousKV()
      .startRevision(String(this.#applied + 1)).create();
    this.#watcher = watcher;
    watcher.on("data", (res) => {
      let last = this.#applied;
      for (const ev of res.events) {
        const { key } = bytesOf(ev.kv);
        const mod = Number(ev.kv.mod_revision);
        if (mod <= this.#applied) continue;
        const rel = key.slice(this.#prefix.length);
        try {
          if (ev.type === "Delete") this.#delete(rel, mod);
          else this.#put(rel, bytesOf(ev.kv).value, mod, true);
        } catch (err) {
          this.#logger?.error("Ignoring a key that does not read back: {key}: {error}", {
            key,
            error: err,
          });
        }
        last = Math.max(last, mod);
      }
      if (res.events.length === 0) last = Math.max(last, Number(res.header.revision));
      this.#advance(last);
    });
    watcher.on("error", (err) => {
      if (this.#closed) return;
      this.#logger?.warn("The etcd watch failed ({error}); reading the store again", {
        error: err,
      });
      void this.#reload();
    });
  }

  /** Reads everything again after the watch could not resume, and tells listeners what changed. */
  #reload(): Promise<void> {
    this.#reloading ??= (async () => {
      const before = new Map(this.#peerEntries());
      await this.#watcher?.cancel().catch(() => {});
      for (let attempt = 0; !this.#closed; attempt++) {
        try {
          const revision = await this.#load();
          const after = new Map(this.#peerEntries());
          for (const [k, peer] of before) {
            if (!after.has(k)) {
              this.#emitDelete(peer.kind, peer.name, peer.publicKey, revision);
            }
          }
          for (const [k, peer] of after) {
            if (JSON.stringify(before.get(k)) !== JSON.stringify(peer)) {
              this.#emit({ type: "upsert", peer, revision });
            }
          }
          this.#floor = revision;
          this.#log.length = 0;
          this.#advance(revision);
          await this.#follow();
          return;
        } catch (err) {
          this.#logger?.warn("Reading the etcd store again failed: {error}", { error: err });
          await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** attempt)));
        }
      }
    })().finally(() => this.#reloading = undefined);
    return this.#reloading;
  }

  *#peerEntries(): Iterable<[string, PeerEntry]> {
    for (const { value: n } of this.#nodes.values()) {
      yield [`node/${n.name}`, nodePeer(this.#nodeInfo(n))];
    }
    for (const { value: c } of this.#clients.values()) yield [`client/${c.name}`, clientPeer(c)];
  }

  #advance(revision: number): void {
    if (revision <= this.#applied) return;
    this.#applied = revision;
    const ready = this.#waiters.filter((w) => w.revision <= revision);
    if (ready.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => w.revision > revision);
    for (const w of ready) w.resolve();
  }

  /** Resolves once the mirror has applied `revision` (or after `limitMs`). */
  #caughtUp(revision: number, limitMs = 2000): Promise<void> {
    if (this.#applied >= revision) return Promise.resolve();
    return new Promise((resolve) => {
      const w = { revision, resolve: () => {} };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        resolve();
      }, limitMs);
      w.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#waiters.push(w);
    });
  }

  /** Applies a put of `rel` (the key without the prefix) to the mirror. */
  #put(rel: string, text: string, mod: number, live = false): void {
    const slash = rel.indexOf("/");
    const kind = rel.slice(0, slash);
    const id = rel.slice(slash + 1);
    switch (kind) {
      case "meta":
        this.#meta.set(id, { value: text, mod });
        return;
      case "flags":
        this.#flags.set(id, { value: text, mod });
        return;
      case "tokens": {
        const t = JSON.parse(text) as TokenValue;
        const old = this.#tokens.get(id);
        if (old !== undefined) this.#tokenByHash.delete(old.value.hash);
        this.#tokens.set(id, { value: t, mod });
        this.#tokenByHash.set(t.hash, id);
        return;
      }
      case "nodes": {
        const n = JSON.parse(text) as NodeRecord;
        const old = this.#nodes.get(id);
        if (old !== undefined) this.#nodeByCredential.delete(old.value.credentialHash);
        this.#nodes.set(id, { value: n, mod });
        this.#nodeByCredential.set(n.credentialHash, id);
        if (!live) return;
        const peer = nodePeer(this.#nodeInfo(n));
        if (old !== undefined && old.value.publicKey !== n.publicKey) {
          // As the embedded store: the old key goes first, in the same revision.
          this.#emitDelete("node", id, old.value.publicKey, mod);
        }
        if (
          old === undefined ||
          JSON.stringify(nodePeer(this.#nodeInfo(old.value))) !== JSON.stringify(peer)
        ) {
          this.#emit({ type: "upsert", peer, revision: mod });
        }
        return;
      }
      case "leases":
        this.#leases.set(id, { value: JSON.parse(text) as { lastSeenAt: number }, mod });
        return;
      case "clients": {
        const c = JSON.parse(text) as ClientInfo;
        this.#clients.set(id, { value: c, mod });
        if (live) this.#emit({ type: "upsert", peer: clientPeer(c), revision: mod });
        return;
      }
      case "pubkeys":
        this.#pubkeys.set(id, { value: text, mod });
        return;
      case "alloc":
        this.#allocs.set(id, { value: JSON.parse(text) as AllocValue, mod });
        return;
      default:
        this.#logger?.debug("Ignoring an unknown key {key}", { key: rel });
    }
  }

  /** Applies a delete of `rel` to the mirror. */
  #delete(rel: string, mod: number): void {
    const slash = rel.indexOf("/");
    const kind = rel.slice(0, slash);
    const id = rel.slice(slash + 1);
    switch (kind) {
      case "meta":
        this.#meta.delete(id);
        return;
      case "flags":
        this.#flags.delete(id);
        return;
      case "tokens": {
        const old = this.#tokens.get(id);
        if (old !== undefined) this.#tokenByHash.delete(old.value.hash);
        this.#tokens.delete(id);
        return;
      }
      case "nodes": {
        const old = this.#nodes.get(id);
        this.#nodes.delete(id);
        if (old === undefined) return;
        this.#nodeByCredential.delete(old.value.credentialHash);
        this.#emitDelete("node", id, old.value.publicKey, mod);
        return;
      }
      case "leases":
        this.#leases.delete(id);
        return;
      case "clients": {
        const old = this.#clients.get(id);
        this.#clients.delete(id);
        if (old === undefined) return;
        this.#emitDelete("client", id, old.value.publicKey, mod);
        return;
      }
      case "pubkeys":
        this.#pubkeys.delete(id);
        return;
      case "alloc":
        this.#allocs.delete(id);
        return;
    }
  }

  #emitDelete(kind: PeerEntry["kind"], name: string, publicKey: string, revision: number): void {
    this.#emit({ type: "delete", kind, name, publicKey, revision });
  }

  #emit(event: WatchEvent): void {
    this.#revision = Math.max(this.#revision, event.revision);
    this.#log.push(event);
    if (this.#log.length > this.#historyLimit) {
      const cut = this.#log.length - this.#historyLimit;
      this.#floor = this.#log[cut - 1]!.revision;
      // Events of one revision go together: never keep half of them.
      let keepFrom = cut;
      while (keepFrom < this.#log.length && this.#log[keepFrom]!.revision === this.#floor) {
        keepFrom++;
      }
      this.#log.splice(0, keepFrom);
    }
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#logger?.error("A store listener failed: {error}", { error: err });
      }
    }
  }

  #nodeInfo(n: NodeRecord): NodeInfo {
    return {
      name: n.name,
      publicKey: n.publicKey,
      endpoint: n.endpoint,
      subnets: [...n.subnets],
      registeredAt: n.registeredAt,
      lastSeenAt: this.#leases.get(n.name)?.value.lastSeenAt ?? n.registeredAt,
    };
  }

  // --- transactions ---

  /** Runs an etcd call, turning connection failures into UnavailableError. */
  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreCorruptError || err instanceof UnavailableError) throw err;
      throw new UnavailableError(`Cannot ${what}: etcd did not answer (${(err as Error).message})`);
    }
  }

  /**
   * Plans a write from the mirror and commits it if nothing it read has
   * changed; otherwise waits for the mirror to catch up and plans again.
   * Returns once this replica's mirror holds the write.
   */
  async #tx<T>(what: string, plan: (p: Plan) => T | typeof NOTHING): Promise<T | undefined> {
    const giveUpAt = Date.now() + UNAVAILABLE_BUDGET_MS;
    for (let attempt = 0;; attempt++) {
      if (this.#closed) throw new UnavailableError(`Cannot ${what}: the store is closed`);
      const draft: Plan = { expect: new Map(), ops: [], claimed: [] };
      try {
        const result = plan(draft);
        if (result === NOTHING) return undefined;
        let res;
        try {
          res = await this.#call(what, () => this.#commit(draft));
        } catch (err) {
          // A member gone or an election under way. Whether the write landed
          // or not, planning again is safe: it compares revisions, and a
          // write that did land reads back as already done.
          if (!(err instanceof UnavailableError) || Date.now() >= giveUpAt) throw err;
          this.#logger?.debug("{what}: etcd did not answer; trying again ({error})", {
            what,
            error: err.message,
          });
          await new Promise((r) => setTimeout(r, Math.min(1000, 100 * 2 ** Math.min(attempt, 4))));
          continue;
        }
        const revision = Number(res.header.revision);
        if (res.succeeded) {
          await this.#caughtUp(revision);
          return result;
        }
        this.#conflicts++;
        if (attempt + 1 >= MAX_ATTEMPTS) {
          throw new UnavailableError(
            `Cannot ${what}: other writers changed the same records ${MAX_ATTEMPTS} times in a row; try again`,
          );
        }
        await this.#caughtUp(revision, 200);
      } finally {
        for (const id of draft.claimed) this.#claimed.delete(id);
      }
      // Spread replicas that collided on the same item.
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 ** attempt)));
    }
  }

  /** {@linkcode #tx} for a plan that always writes (or throws). */
  async #write<T>(what: string, plan: (p: Plan) => T): Promise<T> {
    return (await this.#tx(what, plan)) as T;
  }

  #commit(plan: Plan) {
    const c = this.#client;
    const [first, ...rest] = [...plan.expect];
    if (first === undefined) throw new Error("a transaction without a compare");
    const cmp = (b: ReturnType<Etcd3["if"]>, [key, mod]: [string, number]) =>
      mod === 0 ? b.and(key, "Create", "==", 0) : b.and(key, "Mod", "==", mod);
    let b = first[1] === 0
      ? c.if(first[0], "Create", "==", 0)
      : c.if(first[0], "Mod", "==", first[1]);
    for (const e of rest) b = cmp(b, e);
    return b.then(
      ...plan.ops.map((op) => "put" in op ? c.put(op.put).value(op.value) : c.delete().key(op.del)),
    ).commit();
  }

  /** Records that `rel` must still be as the mirror has it. */
  #expect(p: Plan, rel: string): void {
    p.expect.set(this.#prefix + rel, this.#modOf(rel));
  }

  #modOf(rel: string): number {
    const slash = rel.indexOf("/");
    const kind = rel.slice(0, slash);
    const id = rel.slice(slash + 1);
    const maps: Record<string, Map<string, Versioned<unknown>>> = {
      meta: this.#meta,
      flags: this.#flags,
      tokens: this.#tokens,
      nodes: this.#nodes,
      leases: this.#leases,
      clients: this.#clients,
      pubkeys: this.#pubkeys,
      alloc: this.#allocs,
    };
    return maps[kind]?.get(id)?.mod ?? 0;
  }

  #putOp(p: Plan, rel: string, value: unknown): void {
    p.ops.push({
      put: this.#prefix + rel,
      value: typeof value === "string" ? value : JSON.stringify(value),
    });
  }

  #delOp(p: Plan, rel: string): void {
    p.ops.push({ del: this.#prefix + rel });
  }

  // --- reads ---

  revision(): number {
    return this.#revision;
  }

  snapshot(): PeerSnapshot {
    return { revision: this.#revision, peers: [...this.#peerEntries()].map(([, p]) => p) };
  }

  eventsSince(revision: number): readonly WatchEvent[] | undefined {
    if (revision < this.#floor || revision > this.#revision) return undefined;
    // The log is in revision order: find the first event after `revision`.
    let lo = 0;
    let hi = this.#log.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#log[mid]!.revision <= revision) lo = mid + 1;
      else hi = mid;
    }
    return this.#log.slice(lo);
  }

  listen(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  findToken(secret: string): TokenRecord | undefined {
    const id = this.#tokenByHash.get(hashSecret(secret));
    return id === undefined ? undefined : tokenRecord(this.#tokens.get(id)!.value);
  }

  listTokens(): readonly TokenRecord[] {
    return [...this.#tokens.values()].map((t) => t.value).filter((t) => t.kind === "join")
      .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id)).map(tokenRecord);
  }

  getFlag(key: string): string | undefined {
    return this.#flags.get(key)?.value;
  }

  findNodeByCredential(credential: string): NodeInfo | undefined {
    const name = this.#nodeByCredential.get(hashSecret(credential));
    return name === undefined ? undefined : this.getNode(name);
  }

  getNode(name: string): NodeInfo | undefined {
    const n = this.#nodes.get(name);
    return n === undefined ? undefined : this.#nodeInfo(n.value);
  }

  listNodes(): readonly NodeInfo[] {
    return [...this.#nodes.values()].map((n) => this.#nodeInfo(n.value))
      .sort((a, b) => a.registeredAt - b.registeredAt || a.name.localeCompare(b.name));
  }

  getClient(name: string): ClientInfo | undefined {
    return this.#clients.get(name)?.value;
  }

  listClients(): readonly ClientInfo[] {
    return [...this.#clients.values()].map((c) => c.value)
      .sort((a, b) => a.createdAt - b.createdAt || a.name.localeCompare(b.name));
  }

  usage(): readonly PoolUsage[] {
    return this.#slots.map((s) => {
      let used = 0;
      for (const id of this.#allocs.keys()) {
        const a = addressOf(id.slice(0, id.indexOf("/")));
        if (
          a !== undefined && contains(s.cidr, a) &&
          Number(id.slice(id.indexOf("/") + 1)) === s.itemPrefix
        ) {
          used++;
        }
      }
      return {
        pool: s.kind,
        family: s.cidr.family,
        cidr: s.text,
        used,
        total: Number(s.end - s.first),
      };
    });
  }

  async ping(): Promise<void> {
    await this.#call("reach etcd", () => this.#client.get(this.#prefix + "meta/schema").string());
    if (this.#reloading !== undefined) {
      throw new UnavailableError(
        "Cannot serve yet: reading the etcd store again after a lost watch",
      );
    }
  }

  /** Every write here is committed in etcd before it returns. */
  committed(): void {}

  async settle(): Promise<void> {
    const res = await this.#call(
      "reach etcd",
      () => this.#client.get(this.#prefix + "meta/schema").exec(),
    );
    await this.#caughtUp(Number(res.header.revision), 1000);
  }

  stats(): StoreStats {
    return { conflicts: this.#conflicts };
  }

  dump(): StoreDump {
    const flags: Record<string, string> = {};
    for (const [k, v] of this.#flags) flags[k] = v.value;
    const quarantine = [];
    for (const [subnet, { value }] of this.#allocs) {
      if ("quarantine" in value) quarantine.push({ subnet, ...value.quarantine });
    }
    quarantine.sort((a, b) => a.subnet.localeCompare(b.subnet));
    return {
      pools: this.pools,
      flags,
      tokens: [...this.#tokens.values()].map((t) => ({
        ...tokenRecord(t.value),
        hash: t.value.hash,
      }))
        .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id)),
      nodes: this.listNodes().map((n) => ({
        ...n,
        credentialHash: this.#nodes.get(n.name)!.value.credentialHash,
      })),
      clients: this.listClients(),
      quarantine,
    };
  }

  // --- writes ---

  putToken(
    input: { id: string; kind: "admin" | "join"; secret: string; now: number },
  ): Promise<TokenRecord> {
    const hash = hashSecret(input.secret);
    return this.#write("store a token", (p) => {
      const other = this.#tokenByHash.get(hash);
      if (other !== undefined && other !== input.id) {
        this.#expect(p, `tokens/${other}`);
        this.#delOp(p, `tokens/${other}`);
      }
      this.#expect(p, `tokens/${input.id}`);
      const token: TokenValue = {
        id: input.id,
        kind: input.kind,
        hash,
        expiresAt: null,
        singleUse: false,
        used: false,
        createdAt: input.now,
      };
      this.#putOp(p, `tokens/${input.id}`, token);
      return tokenRecord(token);
    });
  }

  createToken(
    input: { secret: string; now: number; ttlMs?: number; singleUse?: boolean },
  ): Promise<TokenRecord> {
    const id = newTokenId();
    return this.#write("create a token", (p) => {
      this.#expect(p, `tokens/${id}`);
      const token: TokenValue = {
        id,
        kind: "join",
        hash: hashSecret(input.secret),
        expiresAt: input.ttlMs === undefined ? null : input.now + input.ttlMs,
        singleUse: input.singleUse === true,
        used: false,
        createdAt: input.now,
      };
      this.#putOp(p, `tokens/${id}`, token);
      return tokenRecord(token);
    });
  }

  revokeToken(id: string): Promise<void> {
    return this.#write("revoke a token", (p) => {
      const t = this.#tokens.get(id);
      if (t === undefined || t.value.kind !== "join") {
        throw new NotFoundError(`Cannot revoke join token ${id}: no such token`);
      }
      this.#expect(p, `tokens/${id}`);
      this.#delOp(p, `tokens/${id}`);
    });
  }

  setFlag(key: string, value: string): Promise<void> {
    return this.#write("store a flag", (p) => {
      this.#expect(p, `flags/${key}`);
      this.#putOp(p, `flags/${key}`, value);
    });
  }

  async initFlag(key: string, value: string): Promise<boolean> {
    const set = await this.#tx("store a flag", (p) => {
      if (this.#flags.has(key)) return NOTHING;
      this.#expect(p, `flags/${key}`);
      this.#putOp(p, `flags/${key}`, value);
      return true;
    });
    return set === true;
  }

  /** Who else holds a public key, if anyone. */
  #keyHolder(publicKey: string): { kind: string; name: string } | undefined {
    const h = this.#pubkeys.get(publicKey)?.value;
    if (h === undefined) return undefined;
    const slash = h.indexOf("/");
    return { kind: h.slice(0, slash), name: h.slice(slash + 1) };
  }

  /** A free item of a pool: never handed out, or out of its grace period; skips items in flight. */
  #pick(p: Plan, slot: Slot, now: number): string | undefined {
    const span = slot.end - slot.first;
    for (let i = 0n; i < span; i++) {
      const index = slot.first + ((slot.next - slot.first + i) % span);
      const item = itemAt(slot, index);
      if (this.#claimed.has(item)) continue;
      const held = this.#allocs.get(item);
      if (
        held !== undefined &&
        !("quarantine" in held.value && held.value.quarantine.releaseAt <= now)
      ) {
        continue;
      }
      slot.next = index + 1n >= slot.end ? slot.first : index + 1n;
      this.#expect(p, `alloc/${item}`);
      this.#claimed.add(item);
      p.claimed.push(item);
      return item;
    }
    return undefined;
  }

  #exhausted(slot: Slot, now: number): PoolExhaustedError {
    let waiting = 0;
    let next = Infinity;
    for (const [id, { value }] of this.#allocs) {
      const a = addressOf(id.slice(0, id.indexOf("/")));
      if (a === undefined || !contains(slot.cidr, a) || !("quarantine" in value)) continue;
      if (value.quarantine.releaseAt > now) {
        waiting++;
        next = Math.min(next, value.quarantine.releaseAt);
      }
    }
    const used = this.usage().find((u) => u.cidr === slot.text)?.used ?? 0;
    if (slot.kind === "client") {
      return new PoolExhaustedError(
        `Cannot allocate a client address from ${slot.text}: the pool is exhausted`,
      );
    }
    const grace = waiting > 0
      ? `; ${waiting} of them wait out their grace period, the first until ${
        new Date(next).toISOString()
      }`
      : "";
    return new PoolExhaustedError(
      `Cannot allocate a node subnet from ${slot.text}: the pool is exhausted (${used} of ${
        Number(slot.end - slot.first)
      } subnets taken${grace})`,
    );
  }

  registerNode(
    input: { name: string; publicKey: string; endpoint: string },
    options: { principal: Principal; credential: string; now: number },
  ): Promise<RegisterOutcome> {
    const { name, publicKey, endpoint } = input;
    const { principal, now } = options;
    const credentialHash = hashSecret(options.credential);
    return this.#write(`register node ${name}`, (p) => {
      const host = endpointHost(endpoint);
      const a = addressOf(host);
      const pool = a === undefined ? undefined : this.#slots.find((s) => contains(s.cidr, a));
      if (pool !== undefined) {
        throw new RangeError(
          `Cannot register node ${name}: endpoint ${endpoint} is inside the cluster pool ${pool.text}; an endpoint must be an underlay address`,
        );
      }
      if (principal.kind === "join") {
        const t = this.#tokens.get(principal.tokenId);
        if (t === undefined || t.value.kind !== "join") {
          throw new AuthError(`Cannot register: join token ${principal.tokenId} was revoked`);
        }
        if (t.value.expiresAt !== null && t.value.expiresAt <= now) {
          throw new AuthError(`Cannot register: join token ${t.value.id} has expired`);
        }
        if (t.value.singleUse) {
          if (t.value.used) {
            throw new AuthError(
              `Cannot register: single-use join token ${t.value.id} was already used`,
            );
          }
          this.#expect(p, `tokens/${t.value.id}`);
          this.#putOp(p, `tokens/${t.value.id}`, { ...t.value, used: true });
        }
      }
      if (principal.kind === "node" && principal.name !== name) {
        throw new AuthError(
          `Cannot register node ${name}: the credential of node ${principal.name} may register only that node`,
          { missing: false },
        );
      }
      const existing = this.#nodes.get(name)?.value;
      this.#expect(p, `nodes/${name}`);
      this.#expect(p, `pubkeys/${publicKey}`);
      this.#putOp(p, `leases/${name}`, { lastSeenAt: now });
      if (existing !== undefined) {
        checkReregistration(name, principal, existing.credentialHash);
        if (existing.publicKey !== publicKey) {
          const holder = this.#keyHolder(publicKey);
          if (holder !== undefined) {
            throw new ConflictError(
              `Cannot register node ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
            );
          }
          this.#expect(p, `pubkeys/${existing.publicKey}`);
          this.#delOp(p, `pubkeys/${existing.publicKey}`);
          this.#putOp(p, `pubkeys/${publicKey}`, `node/${name}`);
        }
        const record: NodeRecord = { ...existing, publicKey, endpoint, credentialHash };
        this.#putOp(p, `nodes/${name}`, record);
        return { node: { ...this.#nodeInfo(record), lastSeenAt: now }, created: false };
      }
      const holder = this.#keyHolder(publicKey);
      if (holder !== undefined) {
        throw new ConflictError(
          `Cannot register node ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
        );
      }
      const subnets: string[] = [];
      for (const slot of this.#slots.filter((s) => s.kind === "pod")) {
        // A node coming back within its grace period gets its old subnet again.
        let back: string | undefined;
        for (const [id, { value }] of this.#allocs) {
          if (
            "quarantine" in value && value.quarantine.name === name &&
            value.quarantine.publicKey === publicKey && value.quarantine.releaseAt > now &&
            addressOf(id.slice(0, id.indexOf("/")))?.family === slot.cidr.family
          ) back = id;
        }
        const item = back ?? this.#pick(p, slot, now);
        if (item === undefined) throw this.#exhausted(slot, now);
        if (back !== undefined) this.#expect(p, `alloc/${back}`);
        this.#putOp(p, `alloc/${item}`, { owner: `node/${name}` });
        subnets.push(item);
      }
      const record: NodeRecord = {
        name,
        publicKey,
        endpoint,
        subnets,
        credentialHash,
        registeredAt: now,
      };
      this.#putOp(p, `nodes/${name}`, record);
      this.#putOp(p, `pubkeys/${publicKey}`, `node/${name}`);
      return { node: { ...this.#nodeInfo(record), lastSeenAt: now }, created: true };
    });
  }

  resetNode(name: string, _now: number): Promise<NodeInfo> {
    return this.#write(`reset node ${name}`, (p) => {
      const n = this.#nodes.get(name);
      if (n === undefined) {
        throw new NotFoundError(`Cannot reset node ${name}: it is not registered`);
      }
      this.#expect(p, `nodes/${name}`);
      this.#putOp(p, `nodes/${name}`, { ...n.value, credentialHash: resetCredentialHash() });
      return this.#nodeInfo(n.value);
    });
  }

  heartbeat(name: string, now: number): Promise<NodeInfo> {
    return this.#write(`renew the lease of node ${name}`, (p) => {
      const n = this.#nodes.get(name);
      if (n === undefined) {
        throw new NotFoundError(`Cannot renew the lease of node ${name}: it is not registered`);
      }
      this.#expect(p, `nodes/${name}`);
      this.#putOp(p, `leases/${name}`, { lastSeenAt: now });
      return { ...this.#nodeInfo(n.value), lastSeenAt: now };
    });
  }

  /** Plans the removal of a node: its keys go, its subnets wait out the grace period. */
  #dropNode(p: Plan, n: NodeRecord, now: number): void {
    this.#expect(p, `nodes/${n.name}`);
    this.#expect(p, `leases/${n.name}`);
    this.#delOp(p, `nodes/${n.name}`);
    this.#delOp(p, `leases/${n.name}`);
    if (this.#pubkeys.get(n.publicKey)?.value === `node/${n.name}`) {
      this.#expect(p, `pubkeys/${n.publicKey}`);
      this.#delOp(p, `pubkeys/${n.publicKey}`);
    }
    for (const subnet of n.subnets) {
      this.#expect(p, `alloc/${subnet}`);
      this.#putOp(p, `alloc/${subnet}`, {
        quarantine: { name: n.name, publicKey: n.publicKey, releaseAt: now + this.#graceMs },
      });
    }
  }

  removeNode(name: string, now: number): Promise<void> {
    return this.#write(`remove node ${name}`, (p) => {
      const n = this.#nodes.get(name);
      if (n === undefined) {
        throw new NotFoundError(`Cannot remove node ${name}: it is not registered`);
      }
      this.#dropNode(p, n.value, now);
    });
  }

  async expire(now: number, leaseMs: number): Promise<readonly string[]> {
    const gone: string[] = [];
    const stale = this.listNodes().filter((n) => n.lastSeenAt < now - leaseMs).map((n) => n.name);
    for (const name of stale) {
      // Each removal is its own transaction: a heartbeat on another replica
      // changes the lease key, and then this node stays.
      const removed = await this.#tx(`expire node ${name}`, (p) => {
        const n = this.#nodes.get(name);
        if (n === undefined || this.#nodeInfo(n.value).lastSeenAt >= now - leaseMs) return NOTHING;
        this.#dropNode(p, n.value, now);
        return true;
      });
      if (removed === true) gone.push(name);
    }
    const due = [...this.#allocs].filter(([, { value }]) =>
      "quarantine" in value && value.quarantine.releaseAt <= now
    ).map(([id]) => id);
    for (let i = 0; i < due.length; i += 64) {
      await this.#tx("return subnets to the pool", (p) => {
        let any = false;
        for (const id of due.slice(i, i + 64)) {
          const a = this.#allocs.get(id)?.value;
          if (a === undefined || !("quarantine" in a) || a.quarantine.releaseAt > now) continue;
          this.#expect(p, `alloc/${id}`);
          this.#delOp(p, `alloc/${id}`);
          any = true;
        }
        return any ? undefined : NOTHING;
      });
    }
    return gone;
  }

  addClient(input: { name: string; publicKey: string }, now: number): Promise<ClientInfo> {
    const { name, publicKey } = input;
    return this.#write(`add client ${name}`, (p) => {
      const slots = this.#slots.filter((s) => s.kind === "client");
      if (slots.length === 0) {
        throw new ConflictError(
          `Cannot add client ${name}: the cluster has no client pool (start the manager with --client-cidr)`,
        );
      }
      if (this.#clients.has(name)) {
        throw new ConflictError(`Cannot add client ${name}: a client of that name exists`);
      }
      const holder = this.#keyHolder(publicKey);
      if (holder !== undefined) {
        throw new ConflictError(
          `Cannot add client ${name}: the public key is already registered to ${holder.kind} ${holder.name}`,
        );
      }
      this.#expect(p, `clients/${name}`);
      this.#expect(p, `pubkeys/${publicKey}`);
      const addresses = slots.map((slot) => {
        const item = this.#pick(p, slot, now);
        if (item === undefined) throw this.#exhausted(slot, now);
        this.#putOp(p, `alloc/${item}`, { owner: `client/${name}` });
        return item;
      });
      const client: ClientInfo = { name, publicKey, addresses, createdAt: now };
      this.#putOp(p, `clients/${name}`, client);
      this.#putOp(p, `pubkeys/${publicKey}`, `client/${name}`);
      return client;
    });
  }

  removeClient(name: string): Promise<void> {
    return this.#write(`remove client ${name}`, (p) => {
      const c = this.#clients.get(name)?.value;
      if (c === undefined) throw new NotFoundError(`Cannot remove client ${name}: no such client`);
      this.#expect(p, `clients/${name}`);
      this.#delOp(p, `clients/${name}`);
      if (this.#pubkeys.get(c.publicKey)?.value === `client/${name}`) {
        this.#expect(p, `pubkeys/${c.publicKey}`);
        this.#delOp(p, `pubkeys/${c.publicKey}`);
      }
      for (const a of c.addresses) {
        this.#expect(p, `alloc/${a}`);
        this.#delOp(p, `alloc/${a}`);
      }
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listeners.clear();
    for (const w of this.#waiters) w.resolve();
    this.#waiters = [];
    await this.#watcher?.cancel().catch(() => {});
    this.#client.close();
  }
}

function tokenRecord(t: TokenValue): TokenRecord {
  return {
    id: t.id,
    kind: t.kind,
    expiresAt: t.expiresAt,
    singleUse: t.singleUse,
    used: t.used,
    createdAt: t.createdAt,
  };
}

function normalizePrefix(prefix: string | undefined): string {
  const p = prefix ?? "/wgcni/";
  return p.endsWith("/") ? p : p + "/";
}

/** An etcd client for `conn` (does not contact etcd yet). */
export function connect(conn: EtcdConnection): Etcd3 {
  const timeout = conn.requestTimeoutMs ?? 5000;
  const enc = (s: string) => Buffer.from(s, "utf8");
  const options: IOptions = {
    hosts: [...conn.endpoints],
    dialTimeout: timeout,
    defaultCallOptions: (ctx) => ctx.isStream ? {} : { deadline: Date.now() + timeout },
    ...(conn.caCert !== undefined
      ? {
        credentials: {
          rootCertificate: enc(conn.caCert),
          ...(conn.clientKey !== undefined ? { privateKey: enc(conn.clientKey) } : {}),
          ...(conn.clientCert !== undefined ? { certChain: enc(conn.clientCert) } : {}),
        },
      }
      : {}),
    ...(conn.username !== undefined
      ? { auth: { username: conn.username, password: conn.password ?? "" } }
      : {}),
  };
  return new Etcd3(options);
}

/** Writes a whole store under an empty prefix (what `wgcni cluster migrate` does). */
export async function importDump(conn: EtcdConnection, dump: StoreDump): Promise<number> {
  const client = connect(conn);
  const prefix = normalizePrefix(conn.prefix);
  try {
    const present = await client.getAll().prefix(prefix).count().catch((err: Error) => {
      throw new UnavailableError(
        `Cannot reach etcd at ${conn.endpoints.join(", ")}: ${err.message}`,
      );
    });
    if (present > 0) {
      throw new ConflictError(
        `Cannot migrate into ${prefix} on etcd: it holds ${present} keys already; the target must be empty (choose another --etcd-prefix, or empty it)`,
      );
    }
    const puts: [string, string][] = [];
    const put = (rel: string, value: unknown) =>
      puts.push([prefix + rel, typeof value === "string" ? value : JSON.stringify(value)]);
    put("meta/pools", dump.pools);
    for (const [k, v] of Object.entries(dump.flags)) put(`flags/${k}`, v);
    for (const t of dump.tokens) put(`tokens/${t.id}`, t);
    for (const n of dump.nodes) {
      const record: NodeRecord = {
        name: n.name,
        publicKey: n.publicKey,
        endpoint: n.endpoint,
        subnets: n.subnets,
        credentialHash: n.credentialHash,
        registeredAt: n.registeredAt,
      };
      put(`nodes/${n.name}`, record);
      put(`leases/${n.name}`, { lastSeenAt: n.lastSeenAt });
      put(`pubkeys/${n.publicKey}`, `node/${n.name}`);
      for (const s of n.subnets) put(`alloc/${s}`, { owner: `node/${n.name}` });
    }
    for (const c of dump.clients) {
      put(`clients/${c.name}`, c);
      put(`pubkeys/${c.publicKey}`, `client/${c.name}`);
      for (const a of c.addresses) put(`alloc/${a}`, { owner: `client/${c.name}` });
    }
    for (const q of dump.quarantine) {
      put(`alloc/${q.subnet}`, {
        quarantine: { name: q.name, publicKey: q.publicKey, releaseAt: q.releaseAt },
      });
    }
    // Batches each create keys that must not exist; the schema record goes
    // last, so an interrupted migration leaves a prefix that is refused.
    const marker = prefix + "meta/migrating";
    const started = await client.if(marker, "Create", "==", 0)
      .then(client.put(marker).value(newSecret())).commit();
    if (!started.succeeded) {
      throw new ConflictError(`Cannot migrate into ${prefix}: another migration runs`);
    }
    for (let i = 0; i < puts.length; i += 60) {
      const batch = puts.slice(i, i + 60);
      let b = client.if(batch[0]![0], "Create", "==", 0);
      for (const [k] of batch.slice(1)) b = b.and(k, "Create", "==", 0);
      const r = await b.then(...batch.map(([k, v]) => client.put(k).value(v))).commit();
      if (!r.succeeded) {
        throw new ConflictError(
          `Cannot migrate into ${prefix}: another writer created keys there meanwhile`,
        );
      }
    }
    await client.if(prefix + "meta/schema", "Create", "==", 0)
      .then(
        client.put(prefix + "meta/schema").value(String(ETCD_SCHEMA_VERSION)),
        client.delete().key(marker),
      ).commit();
    return puts.length;
  } finally {
    client.close();
  }
}
