/**
 * The cluster in memory, with the indexes reads need (credential hash, token
 * hash, public key): the {@linkcode ClusterView} every engine hands to the
 * rules. The memory engine is only this; the SQLite engine loads it from its
 * tables at open and keeps it in step with what it writes; the etcd engine
 * keeps it in step with etcd's watch.
 */
import type { ClientInfo } from "../domain/cluster.ts";
import { applyIpamChanges, type IpamReader, MemoryIpamStore } from "../ipam/mod.ts";
import type { PoolLayout } from "./cluster_pools.ts";
import type {
  ChangeSet,
  ClusterView,
  KeyHolder,
  NodeRecord,
  QuarantineEntry,
  StoredToken,
} from "./cluster_view.ts";

const byAge = <T extends { name: string }>(at: (x: T) => number) => (a: T, b: T) =>
  at(a) - at(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const oldestNode = byAge<NodeRecord>((n) => n.registeredAt);
const oldestClient = byAge<ClientInfo>((c) => c.createdAt);

/** A {@linkcode ClusterView} in memory, changed by {@linkcode MemoryClusterState.apply} or one record at a time. */
export class MemoryClusterState implements ClusterView {
  readonly layout: PoolLayout;
  /** The engine sets it as it publishes. */
  rev = 0;
  readonly #nodes = new Map<string, NodeRecord>();
  readonly #byCredential = new Map<string, string>();
  readonly #clients = new Map<string, ClientInfo>();
  readonly #keys = new Map<string, KeyHolder>();
  readonly #tokens = new Map<string, StoredToken>();
  readonly #byHash = new Map<string, string>();
  readonly #flags = new Map<string, string>();
  readonly #quarantine = new Map<string, QuarantineEntry>();
  readonly #ipam = new Map<string, MemoryIpamStore>();

  constructor(layout: PoolLayout) {
    this.layout = layout;
  }

  revision(): number {
    return this.rev;
  }

  node(name: string): NodeRecord | undefined {
    return this.#nodes.get(name);
  }

  nodeByCredential(hash: string): NodeRecord | undefined {
    const name = this.#byCredential.get(hash);
    return name === undefined ? undefined : this.#nodes.get(name);
  }

  nodes(): readonly NodeRecord[] {
    return [...this.#nodes.values()].sort(oldestNode);
  }

  nodesSeenBefore(time: number, limit = Infinity): readonly NodeRecord[] {
    const stale = [...this.#nodes.values()].filter((n) => n.lastSeenAt < time);
    return stale.sort(oldestNode).slice(0, limit);
  }

  client(name: string): ClientInfo | undefined {
    return this.#clients.get(name);
  }

  clients(): readonly ClientInfo[] {
    return [...this.#clients.values()].sort(oldestClient);
  }

  keyHolder(publicKey: string): KeyHolder | undefined {
    return this.#keys.get(publicKey);
  }

  token(id: string): StoredToken | undefined {
    return this.#tokens.get(id);
  }

  tokenByHash(hash: string): StoredToken | undefined {
    const id = this.#byHash.get(hash);
    return id === undefined ? undefined : this.#tokens.get(id);
  }

  tokens(): readonly StoredToken[] {
    return [...this.#tokens.values()].sort((a, b) =>
      a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    );
  }

  flag(key: string): string | undefined {
    return this.#flags.get(key);
  }

  flags(): ReadonlyMap<string, string> {
    return this.#flags;
  }

  quarantined(): readonly QuarantineEntry[] {
    return this.#quarantineWhere(() => true);
  }

  quarantinedFor(name: string): readonly QuarantineEntry[] {
    return this.#quarantineWhere((q) => q.name === name);
  }

  quarantineDue(now: number, limit = Infinity): readonly QuarantineEntry[] {
    const due = this.#quarantineWhere((q) => q.releaseAt <= now);
    return due.sort((a, b) => a.releaseAt - b.releaseAt).slice(0, limit);
  }

  #quarantineWhere(keep: (q: QuarantineEntry) => boolean): QuarantineEntry[] {
    return [...this.#quarantine.values()].filter(keep).sort((a, b) =>
      a.subnet < b.subnet ? -1 : a.subnet > b.subnet ? 1 : 0
    );
  }

  ipam(namespace: string): IpamReader {
    return this.ipamStore(namespace);
  }

  /** The pool's allocation state, to change it. */
  ipamStore(namespace: string): MemoryIpamStore {
    let s = this.#ipam.get(namespace);
    if (s === undefined) this.#ipam.set(namespace, s = new MemoryIpamStore());
    return s;
  }

  setNode(name: string, node: NodeRecord | null): void {
    const old = this.#nodes.get(name);
    if (old !== undefined) {
      this.#byCredential.delete(old.credentialHash);
      for (const key of nodeKeys(old)) {
        const h = this.#keys.get(key);
        if (h?.kind === "node" && h.name === name) this.#keys.delete(key);
      }
    }
    if (node === null) {
      this.#nodes.delete(name);
      return;
    }
    this.#nodes.set(name, node);
    this.#byCredential.set(node.credentialHash, name);
    for (const key of nodeKeys(node)) this.#keys.set(key, { kind: "node", name });
  }

  setClient(name: string, client: ClientInfo | null): void {
    const old = this.#clients.get(name);
    if (old !== undefined && this.#keys.get(old.publicKey)?.name === name) {
      this.#keys.delete(old.publicKey);
    }
    if (client === null) {
      this.#clients.delete(name);
      return;
    }
    this.#clients.set(name, client);
    this.#keys.set(client.publicKey, { kind: "client", name });
  }

  setToken(id: string, token: StoredToken | null): void {
    const old = this.#tokens.get(id);
    if (old !== undefined) this.#byHash.delete(old.hash);
    if (token === null) {
      this.#tokens.delete(id);
      return;
    }
    this.#tokens.set(id, token);
    this.#byHash.set(token.hash, id);
  }

  setFlag(key: string, value: string | null): void {
    if (value === null) this.#flags.delete(key);
    else this.#flags.set(key, value);
  }

  setQuarantine(subnet: string, entry: QuarantineEntry | null): void {
    if (entry === null) this.#quarantine.delete(subnet);
    else this.#quarantine.set(subnet, entry);
  }

  /** Applies a committed change set (its deletes first, so a moved key or hash is never lost). */
  apply(c: ChangeSet): void {
    const run = <T>(m: ReadonlyMap<string, T | null>, set: (k: string, v: T | null) => void) => {
      for (const [k, v] of m) if (v === null) set(k, null);
      for (const [k, v] of m) if (v !== null) set(k, v);
    };
    run(c.nodes, (k, v) => this.setNode(k, v));
    run(c.clients, (k, v) => this.setClient(k, v));
    run(c.tokens, (k, v) => this.setToken(k, v));
    run(c.quarantine, (k, v) => this.setQuarantine(k, v));
    run(c.flags, (k, v) => this.setFlag(k, v));
    for (const [ns, changes] of c.ipam) applyIpamChanges(this.ipamStore(ns), changes);
  }
}

/** The keys a node holds: its own, and the next one while it rotates. */
export function nodeKeys(n: NodeRecord): string[] {
  return n.nextKey === undefined ? [n.publicKey] : [n.publicKey, n.nextKey.publicKey];
}
