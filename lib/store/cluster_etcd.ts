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
 *   alloc/CIDR                     a node subnet or client address: its holder, or a
 *                                  removed node's subnet waiting out its grace period, or
 *                                  `{released: N}` once it is back in the pool (the Nth
 *                                  released by that revision: the longest idle is reused
 *                                  first, after every never-used one)
 *
 * Each replica mirrors the prefix in a {@linkcode MemoryClusterState} from one
 * etcd watch, in revision order; reads answer from the mirror, and every
 * committed change reaches the watch hub from there, labelled with etcd's own
 * revision, so a node can resume on any replica. A write runs its rule over
 * the mirror, recording the modification revision of every key the rule
 * read, and commits the change set as one etcd transaction that compares
 * them (or that a new key does not exist yet); when another writer got there
 * first, the transaction changes nothing, the mirror catches up, and the rule
 * runs again over the new state. There is no lock anywhere, and a replica
 * that was paused writes only what still holds. Items this replica is
 * committing count as taken for its other writes meanwhile, so concurrent
 * registrations on one replica do not all race for the same subnet.
 */
import type { Etcd3 } from "etcd3";
import { ConflictError, StoreCorruptError, UnavailableError } from "../errors.ts";
import type { ClientInfo, WatchEvent } from "../domain/cluster.ts";
import { clientPeer, newSecret, nodePeer, type StoreDump } from "./cluster_store.ts";
import { PoolLayout } from "./cluster_pools.ts";
import {
  type ChangeSet,
  type ClusterView,
  type NodeRecord,
  peerChanges,
  type Planned,
  type QuarantineEntry,
  type StoredToken,
} from "./cluster_view.ts";
import { checkSamePools, fromDump } from "./cluster_rules.ts";
import { MemoryClusterState, nodeKeys } from "./cluster_state.ts";
import { type EngineOptions, readBack, RuleStore } from "./_engine.ts";
import { connect, type EtcdConnection, normalizePrefix } from "./etcd_client.ts";

export { connect, type EtcdConnection, parseEtcdUrl } from "./etcd_client.ts";

/** The key layout this code reads and writes. */
export const ETCD_SCHEMA_VERSION = 1;

/** Options of {@linkcode EtcdClusterStore.open}. */
export interface EtcdClusterStoreOptions extends EtcdConnection, EngineOptions {}

/** An alloc/ value: who holds the item, or whose it was while it waits, or its place among the released. */
type AllocValue =
  | { readonly owner: string }
  | {
    readonly quarantine: {
      readonly name: string;
      readonly publicKey: string;
      readonly releaseAt: number;
    };
  }
  | { readonly released: number };

/**
 * The fields of each kind of record as its key holds them, in a fixed order
 * (so that an unchanged record reads as unchanged); a node's lease has a key
 * of its own.
 */
const FIELDS = {
  nodes: [
    "name",
    "publicKey",
    "endpoint",
    "subnets",
    "credentialHash",
    "registeredAt",
    "nat",
    "nextKey",
    "mtu",
  ],
  clients: ["name", "publicKey", "addresses", "createdAt"],
  tokens: ["id", "kind", "hash", "expiresAt", "singleUse", "used", "createdAt"],
} as const;

/** A key to put (its text) or delete (null), relative to the prefix. */
interface Write {
  readonly rel: string;
  readonly text: string | null;
}

/** How long a write keeps trying while etcd does not answer (a member lost, an election). */
const UNAVAILABLE_BUDGET_MS = 20_000;
const MAX_ATTEMPTS = 50;
/** Removals and returns to the pool per transaction: etcd bounds the operations of one. */
const BATCH = 16;
/** The owner an item seems to have while another write of this replica commits it. */
const IN_FLIGHT = "\u0000in flight";

function bytesOf(kv: { key: Uint8Array | string; value?: Uint8Array | string | null }) {
  const dec = new TextDecoder();
  const key = typeof kv.key === "string" ? kv.key : dec.decode(kv.key);
  const v = kv.value ?? "";
  return { key, value: typeof v === "string" ? v : dec.decode(v) };
}

/**
 * The keys a change set writes, in the layout above, leaving out what the
 * keys already hold (`current`).
 */
function encode(
  c: ChangeSet,
  state: MemoryClusterState,
  current: (rel: string) => string | undefined,
): Write[] {
  const out: Write[] = [];
  const put = (rel: string, v: unknown) => out.push({ rel, text: JSON.stringify(v) });
  const del = (rel: string) => out.push({ rel, text: null });
  const holders = new Map<string, string>();
  const peer = <T extends { name: string; publicKey: string }>(
    kind: "node" | "client",
    m: ReadonlyMap<string, T | null>,
    before: (name: string) => T | undefined,
    write: (x: T) => readonly string[],
    keys: (x: T) => readonly string[] = (x) => [x.publicKey],
  ) => {
    for (const [name, x] of m) {
      const old = before(name);
      const mine = (key: string) => current(`pubkeys/${key}`) === `${kind}/${name}`;
      const kept = new Set(x === null ? [] : keys(x));
      for (const key of old === undefined ? [] : keys(old)) {
        if (!kept.has(key) && mine(key)) del(`pubkeys/${key}`);
      }
      if (x === null) continue;
      for (const key of kept) out.push({ rel: `pubkeys/${key}`, text: `${kind}/${name}` });
      for (const item of write(x)) holders.set(item, `${kind}/${name}`);
    }
  };
  for (const kind of ["nodes", "clients", "tokens"] as const) {
    for (const [id, x] of c[kind] as ReadonlyMap<string, Record<string, unknown> | null>) {
      if (x === null) del(`${kind}/${id}`);
      else put(`${kind}/${id}`, Object.fromEntries(FIELDS[kind].map((f) => [f, x[f]])));
    }
  }
  // The lease key carries what changes with each renewal: when, and what the node reported.
  for (const [name, n] of c.nodes) {
    if (n === null) del(`leases/${name}`);
    else put(`leases/${name}`, { lastSeenAt: n.lastSeenAt, pods: n.pods, ready: n.ready });
  }
  peer("node", c.nodes, (n) => state.node(n), (n) => n.subnets, nodeKeys);
  peer("client", c.clients, (n) => state.client(n), (x) => x.addresses);
  for (const [k, v] of c.flags) out.push({ rel: `flags/${k}`, text: v });
  const released = new Map<string, number>();
  const unbound = new Set<string>();
  for (const [ns, ch] of c.ipam) {
    const slot = state.layout.slots.find((s) => s.namespace === ns)!;
    ch.pushed.forEach((i, n) => released.set(state.layout.itemAt(slot, i), n));
    for (const i of ch.unbound.keys()) unbound.add(state.layout.itemAt(slot, i));
  }
  const items = [...c.quarantine.keys(), ...released.keys(), ...holders.keys(), ...unbound];
  for (const item of new Set(items)) {
    const q = c.quarantine.get(item);
    let v: AllocValue | undefined;
    if (q) v = { quarantine: { name: q.name, publicKey: q.publicKey, releaseAt: q.releaseAt } };
    else if (released.has(item)) v = { released: released.get(item)! };
    else if (holders.has(item)) v = { owner: holders.get(item)! };
    if (v !== undefined) put(`alloc/${item}`, v);
    else if (q === null || unbound.has(item)) del(`alloc/${item}`);
  }
  return out.filter((w) => w.text !== (current(w.rel) ?? null));
}

/**
 * The mirror as one rule reads it, recording in `expect` the modification
 * revision of every key behind what the rule reads: the transaction compares
 * them. Items in `claimed` read as held.
 */
function trackedView(
  state: MemoryClusterState,
  mod: (rel: string) => number,
  claimed: ReadonlySet<string>,
  expect: Map<string, number>,
): ClusterView {
  const read = <T>(value: T, ...rels: string[]): T => {
    for (const rel of rels) if (!expect.has(rel)) expect.set(rel, mod(rel));
    return value;
  };
  const alloc = (q: readonly QuarantineEntry[]) => read(q, ...q.map((x) => `alloc/${x.subnet}`));
  return {
    layout: state.layout,
    revision: () => state.revision(),
    node: (name) => read(state.node(name), `nodes/${name}`),
    nodeByCredential: (hash) => state.nodeByCredential(hash),
    nodes: () => state.nodes(),
    nodesSeenBefore: (time, limit) => {
      const stale = state.nodesSeenBefore(time, limit);
      return read(stale, ...stale.flatMap((n) => [`nodes/${n.name}`, `leases/${n.name}`]));
    },
    client: (name) => read(state.client(name), `clients/${name}`),
    clients: () => state.clients(),
    keyHolder: (key) => read(state.keyHolder(key), `pubkeys/${key}`),
    token: (id) => read(state.token(id), `tokens/${id}`),
    tokenByHash: (hash) => {
      const t = state.tokenByHash(hash);
      return t && read(t, `tokens/${t.id}`);
    },
    tokens: () => state.tokens(),
    flag: (key) => read(state.flag(key), `flags/${key}`),
    flags: () => state.flags(),
    quarantined: () => state.quarantined(),
    quarantinedFor: (name) => alloc(state.quarantinedFor(name)),
    quarantineDue: (now, limit) => alloc(state.quarantineDue(now, limit)),
    ipam: (namespace) => {
      const base = state.ipam(namespace);
      const slot = state.layout.slots.find((s) => s.namespace === namespace)!;
      return {
        indexOf: (owner) => read(base.indexOf(owner), `alloc/${owner}`),
        ownerAt: (index) => {
          const item = state.layout.itemAt(slot, index);
          return claimed.has(item) ? IN_FLIGHT : read(base.ownerAt(index), `alloc/${item}`);
        },
        released: () => base.released(),
        cursor: () => base.cursor(),
        count: () => base.count(),
        list: () => base.list(),
      };
    },
  };
}

/** A {@linkcode ClusterStore} on etcd. Open with {@linkcode EtcdClusterStore.open}. */
export class EtcdClusterStore extends RuleStore<"async"> {
  readonly #client: Etcd3;
  readonly #prefix: string;
  /** Every key under the prefix, relative to it, with its text and modification revision. */
  readonly #keys = new Map<string, { text: string; mod: number }>();
  /** Items picked by transactions of this process still in flight. */
  readonly #claimed = new Set<string>();
  /** The etcd revision the mirror has applied. */
  #applied = 0;
  /** Who waits for the mirror to apply a revision. */
  readonly #waiters = new Set<{ revision: number; resolve: () => void }>();
  #watcher: { cancel(): Promise<void> } | undefined;
  #closed = false;
  #reloading: Promise<void> | undefined;

  private constructor(client: Etcd3, options: EtcdClusterStoreOptions) {
    super({ ...options, batch: BATCH });
    this.#client = client;
    this.#prefix = normalizePrefix(options.prefix);
  }

  /**
   * Connects, creates the layout under an empty prefix, loads the mirror and
   * starts following changes. Throws StoreCorruptError for a prefix that holds
   * something else (or another schema, or other pools while nodes exist, or
   * holdings its allocations lost) and UnavailableError when etcd cannot be reached.
   */
  static async open(options: EtcdClusterStoreOptions): Promise<EtcdClusterStore> {
    const client = connect(options);
    const store = new EtcdClusterStore(client, options);
    try {
      await store.#init();
      await store.#load();
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
    const schema = () => this.#call("read the store", () => this.#client.get(schemaKey).string());
    // A listing of two keys may leave the schema record out: read it on its own.
    if (present.length > 0 && !present.includes(schemaKey) && await schema() === null) {
      throw new StoreCorruptError(
        `Cannot open the etcd store under ${p}: it holds keys but no schema record (an interrupted migration, or data of something else); empty the prefix or choose another with --etcd-prefix`,
      );
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
    const version = await schema();
    if (version !== String(ETCD_SCHEMA_VERSION)) {
      throw new StoreCorruptError(
        `Cannot open the etcd store under ${p}: its schema version is ${version}, this wgcni reads ${ETCD_SCHEMA_VERSION}`,
      );
    }
  }

  /** Reads the whole prefix into a new mirror and serves it; returns the revision it serves at. */
  async #load(): Promise<number> {
    const res = await this.#call(
      "read the store",
      () => this.#client.getAll().prefix(this.#prefix).exec(),
    );
    const revision = Number(res.header.revision);
    this.#keys.clear();
    for (const kv of res.kvs) {
      const { key, value } = bytesOf(kv);
      this.#keys.set(key.slice(this.#prefix.length), { text: value, mod: Number(kv.mod_revision) });
    }
    const stored = this.#keys.get("meta/pools")?.text;
    checkSamePools(
      `the etcd store under ${this.#prefix}`,
      stored === undefined ? undefined : JSON.parse(stored),
      this.pools,
      [...this.#keys.keys()].some((k) => /^(nodes|clients|alloc)\//.test(k)),
    );
    const state = new MemoryClusterState(this.layout);
    const released: { item: string; order: [number, number] }[] = [];
    readBack(`the etcd store under ${this.#prefix}`, "a key", () => {
      for (const [rel, { text, mod }] of this.#keys) {
        const v = rel.startsWith("alloc/") ? JSON.parse(text) as AllocValue : undefined;
        if (v !== undefined && "released" in v) {
          released.push({ item: rel.slice(6), order: [mod, v.released] });
        } else this.#derive(state, rel, text);
      }
    });
    // Below the cursor, an item without a key was used once and freed by an
    // earlier version (or a migration): released, before the keyed ones.
    const keyed = new Set(released.map((r) => r.item));
    for (const item of keyed) {
      const at = this.layout.locate(item);
      const ipam = at && state.ipamStore(at.slot.namespace);
      if (at && ipam!.cursor() <= at.index) ipam!.setCursor(at.index + 1n);
    }
    for (const slot of this.layout.slots) {
      const ipam = state.ipamStore(slot.namespace);
      for (let i = slot.first; i < ipam.cursor() && i < slot.end; i++) {
        const item = this.layout.itemAt(slot, i);
        if (ipam.ownerAt(i) === undefined && !keyed.has(item)) ipam.pushReleased(i);
      }
    }
    released.sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1]);
    for (const r of released) this.#derive(state, `alloc/${r.item}`, `{"released":0}`);
    this.adopt(state, Math.max(this.feed.revision, revision));
    this.#applied = revision;
    return this.state.rev;
  }

  /** Follows every change after the loaded revision; reloads when etcd compacted past it. */
  async #follow(): Promise<void> {
    const watcher = await this.#client.watch().prefix(this.#prefix).withPreviousKV()
      .startRevision(String(this.#applied + 1)).create();
    this.#watcher = watcher;
    watcher.on("data", (res) => {
      let last = this.#applied;
      const events: WatchEvent[] = [];
      for (const ev of res.events) {
        const { key } = bytesOf(ev.kv);
        const mod = Number(ev.kv.mod_revision);
        if (mod <= this.#applied) continue;
        const rel = key.slice(this.#prefix.length);
        try {
          events.push(
            ...this.#apply(rel, ev.type === "Delete" ? undefined : bytesOf(ev.kv).value, mod),
          );
        } catch (err) {
          this.logger?.error("Ignoring a key that does not read back: {key}: {error}", {
            key,
            error: err,
          });
        }
        last = Math.max(last, mod);
      }
      if (res.events.length === 0) last = Math.max(last, Number(res.header.revision));
      this.state.rev = Math.max(this.state.rev, last);
      this.feed.publish(events);
      this.#advance(last);
    });
    watcher.on("error", (err) => {
      if (this.#closed) return;
      this.logger?.warn("The etcd watch failed ({error}); reading the store again", {
        error: err,
      });
      void this.#reload();
    });
  }

  /** Reads everything again after the watch could not resume, and tells listeners what changed. */
  #reload(): Promise<void> {
    this.#reloading ??= (async () => {
      await this.#watcher?.cancel().catch(() => {});
      for (let attempt = 0; !this.#closed; attempt++) {
        try {
          this.#advance(await this.#load());
          await this.#follow();
          return;
        } catch (err) {
          this.logger?.warn("Reading the etcd store again failed: {error}", { error: err });
          await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** attempt)));
        }
      }
    })().finally(() => this.#reloading = undefined);
    return this.#reloading;
  }

  #advance(revision: number): void {
    if (revision <= this.#applied) return;
    this.#applied = revision;
    for (const w of this.#waiters) if (w.revision <= revision) w.resolve();
  }

  /** Resolves once the mirror has applied `revision` (or after `limitMs`). */
  #caughtUp(revision: number, limitMs = 2000): Promise<void> {
    if (this.#applied >= revision) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    const w = { revision, resolve };
    this.#waiters.add(w);
    const timer = setTimeout(resolve, limitMs);
    return promise.finally(() => {
      clearTimeout(timer);
      this.#waiters.delete(w);
    });
  }

  /** Applies a watched put (`text`) or delete (undefined) of `rel`; returns the peer changes it makes. */
  #apply(rel: string, text: string | undefined, mod: number): WatchEvent[] {
    const id = rel.slice(rel.indexOf("/") + 1);
    const peer = () => {
      const n = rel.startsWith("nodes/") ? this.state.node(id) : undefined;
      const c = rel.startsWith("clients/") ? this.state.client(id) : undefined;
      return n ? nodePeer(n) : c && clientPeer(c);
    };
    const before = peer();
    if (text === undefined) this.#keys.delete(rel);
    else this.#keys.set(rel, { text, mod });
    this.#derive(this.state, rel, text);
    return peerChanges(before, peer()).map((e) => ({ ...e, revision: mod }) as WatchEvent);
  }

  /** Brings the state in line with one key (put: its text; delete: undefined). */
  #derive(state: MemoryClusterState, rel: string, text: string | undefined): void {
    const slash = rel.indexOf("/");
    const id = rel.slice(slash + 1);
    const json = () => text === undefined ? undefined : JSON.parse(text);
    switch (rel.slice(0, slash)) {
      case "flags":
        return state.setFlag(id, text ?? null);
      case "tokens":
        return state.setToken(id, (json() as StoredToken | undefined) ?? null);
      case "clients":
        return state.setClient(id, (json() as ClientInfo | undefined) ?? null);
      case "nodes":
      case "leases": {
        const n = (rel.startsWith("nodes/") ? json() : state.node(id)) as NodeRecord | undefined;
        if (n === undefined) return state.setNode(id, null);
        const text = this.#keys.get(`leases/${id}`)?.text;
        const lease = text === undefined
          ? { lastSeenAt: n.registeredAt }
          : JSON.parse(text) as { lastSeenAt: number; pods?: number; ready?: boolean };
        const { pods: _p, ready: _r, ...node } = n;
        return state.setNode(id, { ...node, ...lease });
      }
      case "alloc":
        return this.#deriveAlloc(state, id, json() as AllocValue | undefined);
    }
  }

  #deriveAlloc(state: MemoryClusterState, item: string, v: AllocValue | undefined): void {
    const at = this.layout.locate(item);
    if (at === undefined) return; // of pools this replica does not serve
    const ipam = state.ipamStore(at.slot.namespace);
    const owner = ipam.ownerAt(at.index);
    if (v !== undefined && !("released" in v)) {
      if (owner === undefined) ipam.bind(item, at.index);
      state.setQuarantine(
        item,
        "quarantine" in v ? { subnet: item, family: at.slot.cidr.family, ...v.quarantine } : null,
      );
    } else {
      if (owner !== undefined) ipam.unbind(owner);
      ipam.pushReleased(at.index);
      state.setQuarantine(item, null);
    }
    if (ipam.cursor() <= at.index) ipam.setCursor(at.index + 1n);
  }

  /** Runs an etcd call, turning connection failures into UnavailableError. */
  async #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreCorruptError || err instanceof UnavailableError) throw err;
      throw new UnavailableError(`Cannot ${what}: etcd did not answer (${(err as Error).message})`);
    }
  }

  // --- transactions ---

  /**
   * Runs the rule over the mirror and commits its change set if nothing the
   * rule read has changed; otherwise waits for the mirror to catch up and
   * runs it again. Returns once this replica's mirror holds the write.
   */
  protected async transact<T>(what: string, rule: (view: ClusterView) => Planned<T>): Promise<T> {
    const giveUpAt = Date.now() + UNAVAILABLE_BUDGET_MS;
    for (let attempt = 0;; attempt++) {
      if (this.#closed) throw new UnavailableError(`Cannot ${what}: the store is closed`);
      const mod = (rel: string) => this.#keys.get(rel)?.mod ?? 0;
      const expect = new Map<string, number>();
      const { result, changes } = rule(trackedView(this.state, mod, this.#claimed, expect));
      const writes = encode(changes, this.state, (rel) => this.#keys.get(rel)?.text);
      if (writes.length === 0) return result;
      // What it writes must still be as read; a lease is last writer wins.
      for (const w of writes) if (!w.rel.startsWith("leases/")) expect.set(w.rel, mod(w.rel));
      const claimed = writes.filter((w) => w.rel.startsWith("alloc/")).map((w) => w.rel.slice(6));
      for (const item of claimed) this.#claimed.add(item);
      try {
        let res;
        try {
          res = await this.#call(what, () => this.#commit(expect, writes));
        } catch (err) {
          // A member gone or an election under way. Whether the write landed
          // or not, running the rule again is safe: it compares revisions,
          // and a write that did land reads back as already done.
          if (!(err instanceof UnavailableError) || Date.now() >= giveUpAt) throw err;
          this.logger?.debug("{what}: etcd did not answer; trying again ({error})", {
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
        this.conflicts++;
        if (attempt + 1 >= MAX_ATTEMPTS) {
          throw new UnavailableError(
            `Cannot ${what}: other writers changed the same records ${MAX_ATTEMPTS} times in a row; try again`,
          );
        }
        await this.#caughtUp(revision, 200);
      } finally {
        for (const item of claimed) this.#claimed.delete(item);
      }
      // Spread replicas that collided on the same item.
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(50, 2 ** attempt)));
    }
  }

  #commit(expect: ReadonlyMap<string, number>, writes: readonly Write[]) {
    const c = this.#client;
    const p = this.#prefix;
    const [first = ["meta/schema", this.#keys.get("meta/schema")?.mod ?? 0], ...rest] = [...expect];
    const kind = (mod: number) => (mod === 0 ? "Create" : "Mod") as "Create" | "Mod";
    let b = c.if(p + first[0], kind(first[1]), "==", first[1]);
    for (const [rel, mod] of rest) b = b.and(p + rel, kind(mod), "==", mod);
    return b.then(
      ...writes.map((w) =>
        w.text === null ? c.delete().key(p + w.rel) : c.put(p + w.rel).value(w.text)
      ),
    ).commit();
  }

  override async ping(): Promise<void> {
    await this.#call("reach etcd", () => this.#client.get(this.#prefix + "meta/schema").string());
    if (this.#reloading !== undefined) {
      throw new UnavailableError(
        "Cannot serve yet: reading the etcd store again after a lost watch",
      );
    }
  }

  override async settle(): Promise<void> {
    const res = await this.#call(
      "reach etcd",
      () => this.#client.get(this.#prefix + "meta/schema").exec(),
    );
    await this.#caughtUp(Number(res.header.revision), 1000);
  }

  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    super.close();
    for (const w of this.#waiters) w.resolve();
    await this.#watcher?.cancel().catch(() => {});
    this.#client.close();
  }
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
    const empty = new MemoryClusterState(new PoolLayout(dump.pools));
    const puts = [
      { rel: "meta/pools", text: JSON.stringify(dump.pools) },
      ...encode(fromDump(empty, dump).changes, empty, () => undefined),
    ].map((w): [string, string] => [prefix + w.rel, w.text ?? ""]);
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
