/**
 * What every engine of the cluster store shares: {@linkcode RuleStore}, the
 * {@linkcode ClusterStore} methods as calls of the rules (an engine supplies
 * only `transact`: run a rule over its view, commit the change set
 * atomically), and {@linkcode PeerFeed}, the peers and the history the watch
 * is fed from.
 */
import type { Logger } from "../log.ts";
import { StoreCorruptError } from "../errors.ts";
import type {
  ClientInfo,
  NextKey,
  NodeInfo,
  NodeReport,
  PeerEntry,
  PeerSnapshot,
  WatchEvent,
} from "../domain/cluster.ts";
import {
  type Awaitable,
  type ClusterStore,
  type EventListener,
  hashSecret,
  newTokenId,
  type PoolConfig,
  type PoolUsage,
  type Principal,
  type RegisterInput,
  type RegisterOutcome,
  resetCredentialHash,
  type StoreDump,
  type StoreStats,
  type TokenRecord,
} from "./cluster_store.ts";
import * as rules from "./cluster_rules.ts";
import {
  type ClusterView,
  nodeInfo,
  type PeerChange,
  peerChanges,
  peersOf,
  type Planned,
  tokenRecord,
} from "./cluster_view.ts";
import { MemoryClusterState } from "./cluster_state.ts";
import { PoolLayout } from "./cluster_pools.ts";

/** What every engine is opened with. */
export interface EngineOptions {
  readonly pools: PoolConfig;
  /** How long a removed node's subnets wait before they are handed out again (default 1 day). */
  readonly graceMs?: number;
  /** Peer changes kept for replay (default 10,000). */
  readonly historyLimit?: number;
  readonly logger?: Logger;
}

/** Whether an engine answers at once or over the network. */
export type Mode = "sync" | "async";
/** A value of an engine of that mode. */
export type Out<M extends Mode, T> = M extends "sync" ? T : Promise<T>;

/** The peers at the current revision, the bounded history of changes, and who listens. */
export class PeerFeed {
  readonly #peers = new Map<string, PeerEntry>();
  readonly #listeners = new Set<EventListener>();
  readonly #log: WatchEvent[] = [];
  readonly #limit: number | undefined;
  readonly #logger: Logger | undefined;
  /** The revision of the last published change (or where the feed was reset to). */
  revision = 0;
  /** Replay covers the changes after this revision. */
  floor = 0;

  /** `historyLimit`: events kept for replay; none kept (the engine replays itself) when absent. */
  constructor(options: { historyLimit?: number | undefined; logger?: Logger | undefined }) {
    this.#limit = options.historyLimit;
    this.#logger = options.logger;
  }

  /** Starts over with these peers at `revision`; nothing before it can be replayed. */
  reset(peers: Iterable<PeerEntry>, revision: number, floor = revision): void {
    this.#peers.clear();
    for (const p of peers) this.#peers.set(`${p.kind}/${p.name}`, p);
    this.revision = revision;
    this.floor = floor;
    this.#log.length = 0;
  }

  /**
   * Starts over like {@linkcode reset}, after telling listeners how these
   * peers differ from the current ones (each change labelled `revision`):
   * for an engine that read its whole store again.
   */
  replace(peers: Iterable<PeerEntry>, revision: number, floor = revision): void {
    const after = new Map([...peers].map((p) => [`${p.kind}/${p.name}`, p]));
    const events: WatchEvent[] = [];
    for (const k of new Set([...this.#peers.keys(), ...after.keys()])) {
      for (const e of peerChanges(this.#peers.get(k), after.get(k))) {
        events.push({ ...e, revision } as WatchEvent);
      }
    }
    this.publish(events);
    this.reset(after.values(), revision, floor);
  }

  /** Publishes committed changes, in revision order: peers and revision first, then each listener. */
  publish(events: readonly WatchEvent[]): void {
    if (events.length === 0) return;
    for (const e of events) {
      if (e.type === "upsert") this.#peers.set(`${e.peer.kind}/${e.peer.name}`, e.peer);
      else if (e.type === "delete") this.#peers.delete(`${e.kind}/${e.name}`);
      this.revision = Math.max(this.revision, e.revision);
    }
    if (this.#limit !== undefined) this.#keep(events, this.#limit);
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

  #keep(events: readonly WatchEvent[], limit: number): void {
    this.#log.push(...events);
    if (this.#log.length <= limit) return;
    const cut = this.#log.length - limit;
    this.floor = this.#log[cut - 1]!.revision;
    // Events of one revision go together: never keep half of them.
    let keepFrom = cut;
    while (keepFrom < this.#log.length && this.#log[keepFrom]!.revision === this.floor) keepFrom++;
    this.#log.splice(0, keepFrom);
  }

  snapshot(): PeerSnapshot {
    return { revision: this.revision, peers: [...this.#peers.values()] };
  }

  /** The kept changes after `revision`, or undefined when some are gone or it is ahead. */
  eventsSince(revision: number): readonly WatchEvent[] | undefined {
    if (revision < this.floor || revision > this.revision) return undefined;
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

  close(): void {
    this.#listeners.clear();
  }
}

/**
 * Runs `read` over the records of `store`, refusing (StoreCorruptError) to
 * open it when `read` throws: `record` is what did not read back.
 */
export function readBack<T>(store: string, record: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    throw new StoreCorruptError(
      `Cannot open ${store}: ${record} does not read back (${(err as Error).message})`,
    );
  }
}

/** Numbers peer changes one revision each, after `revision`. */
export function numbered(events: readonly PeerChange[], revision: number): WatchEvent[] {
  return events.map((e, i) => ({ ...e, revision: revision + i + 1 }) as WatchEvent);
}

/** The {@linkcode ClusterStore} methods over the rules; an engine adds how to read and commit. */
export abstract class RuleStore<M extends Mode> implements ClusterStore {
  readonly pools: PoolConfig;
  protected readonly layout: PoolLayout;
  protected readonly graceMs: number;
  /** Peer changes kept for replay. */
  protected readonly historyLimit: number;
  /** At most this many removals or returns per change set (see {@linkcode rules.Policy}). */
  protected readonly batch: number | undefined;
  /** The engine's view of the cluster (reads answer from it); an engine that reads everything again replaces it. */
  protected state: MemoryClusterState;
  protected readonly feed: PeerFeed;
  protected readonly logger: Logger | undefined;
  /** Transactions run again because another writer changed what they read. */
  protected conflicts = 0;

  constructor(
    options: EngineOptions & {
      readonly batch?: number;
      /** The engine replays from its own log of changes: the feed keeps none. */
      readonly ownLog?: boolean;
    },
  ) {
    this.pools = options.pools;
    this.layout = new PoolLayout(options.pools);
    this.graceMs = options.graceMs ?? 86_400_000;
    this.historyLimit = options.historyLimit ?? 10_000;
    this.batch = options.batch;
    this.state = new MemoryClusterState(this.layout);
    this.logger = options.logger;
    const historyLimit = options.ownLog ? undefined : this.historyLimit;
    this.feed = new PeerFeed({ historyLimit, logger: this.logger });
  }

  /**
   * Serves `state`, read anew from storage, at `revision` (replay from
   * `floor` on), once its pools hold what its records hold (StoreCorruptError
   * otherwise); listeners hear how its peers differ from those served before.
   */
  protected adopt(state: MemoryClusterState, revision: number, floor = revision): void {
    rules.checkHoldings(state);
    state.rev = revision;
    this.state = state;
    this.feed.replace(peersOf(state), revision, floor);
  }

  /**
   * Runs `rule` over the engine's view and commits its changes atomically;
   * `grouped` writes may share a commit with others of the same moment.
   */
  protected abstract transact<T>(
    what: string,
    rule: (view: ClusterView) => Planned<T>,
    grouped?: boolean,
  ): Out<M, T>;

  revision(): number {
    return this.feed.revision;
  }

  snapshot(): PeerSnapshot {
    return this.feed.snapshot();
  }

  eventsSince(revision: number): readonly WatchEvent[] | undefined {
    return this.feed.eventsSince(revision);
  }

  listen(listener: EventListener): () => void {
    return this.feed.listen(listener);
  }

  putToken(
    input: { id: string; kind: "admin" | "join"; secret: string; now: number },
  ): Out<M, TokenRecord> {
    const { id, kind, now } = input;
    const hash = hashSecret(input.secret);
    return this.transact("store a token", (v) => rules.putToken(v, { id, kind, hash, now }));
  }

  createToken(
    input: { secret: string; now: number; ttlMs?: number; singleUse?: boolean },
  ): Out<M, TokenRecord> {
    const t = { ...input, id: newTokenId(), hash: hashSecret(input.secret) };
    return this.transact("create a token", (v) => rules.createToken(v, t));
  }

  findToken(secret: string): TokenRecord | undefined {
    const t = this.state.tokenByHash(hashSecret(secret));
    return t === undefined ? undefined : tokenRecord(t);
  }

  listTokens(): readonly TokenRecord[] {
    return this.state.tokens().filter((t) => t.kind === "join").map(tokenRecord);
  }

  revokeToken(id: string): Out<M, void> {
    return this.transact("revoke a token", (v) => rules.revokeToken(v, id));
  }

  getFlag(key: string): string | undefined {
    return this.state.flag(key);
  }

  setFlag(key: string, value: string): Out<M, void> {
    return this.transact("store a flag", (v) => rules.setFlag(v, key, value));
  }

  initFlag(key: string, value: string): Out<M, boolean> {
    return this.transact("store a flag", (v) => rules.initFlag(v, key, value));
  }

  registerNode(
    input: RegisterInput,
    options: { principal: Principal; credential: string; now: number },
  ): Out<M, RegisterOutcome> {
    const o = {
      principal: options.principal,
      credentialHash: hashSecret(options.credential),
      now: options.now,
      ...this.#batch(),
    };
    return this.transact(
      `register node ${input.name}`,
      (v) => rules.registerNode(v, input, o),
      true,
    );
  }

  findNodeByCredential(credential: string): NodeInfo | undefined {
    const n = this.state.nodeByCredential(hashSecret(credential));
    return n === undefined ? undefined : nodeInfo(n);
  }

  getNode(name: string): NodeInfo | undefined {
    const n = this.state.node(name);
    return n === undefined ? undefined : nodeInfo(n);
  }

  listNodes(): readonly NodeInfo[] {
    return this.state.nodes().map(nodeInfo);
  }

  resetNode(name: string, _now: number): Out<M, NodeInfo> {
    const hash = resetCredentialHash();
    return this.transact(`reset node ${name}`, (v) => rules.resetNode(v, name, hash));
  }

  observeEndpoint(name: string, endpoint: string, by: Principal): Out<M, NodeInfo> {
    return this.transact(
      `record an endpoint of node ${name}`,
      (v) => rules.observeEndpoint(v, name, endpoint, by),
    );
  }

  announceKey(
    name: string,
    next: NextKey,
    options: { principal: Principal; now: number },
  ): Out<M, NodeInfo> {
    return this.transact(
      `announce the next key of node ${name}`,
      (v) => rules.announceKey(v, name, next, options),
    );
  }

  heartbeat(name: string, now: number, report?: NodeReport): Out<M, NodeInfo> {
    return this.transact(
      `renew the lease of node ${name}`,
      (v) => rules.heartbeat(v, name, now, report),
      true,
    );
  }

  removeNode(name: string, now: number): Out<M, void> {
    const policy = { graceMs: this.graceMs, now };
    return this.transact(`remove node ${name}`, (v) => rules.removeNode(v, name, policy));
  }

  /** Expires in change sets of at most {@linkcode batch} removals and returns, each committed on its own. */
  expire(now: number, leaseMs: number): Out<M, readonly string[]> {
    const policy = { graceMs: this.graceMs, now, leaseMs, ...this.#batch() };
    const gone: string[] = [];
    const step = (): Awaitable<readonly string[]> =>
      andThen(this.transact("expire leases", (v) => rules.expire(v, policy)), (r) => {
        gone.push(...r.removed);
        return r.more && r.removed.length + r.released > 0 ? step() : gone;
      });
    return step() as Out<M, readonly string[]>;
  }

  addClient(input: { name: string; publicKey: string }, now: number): Out<M, ClientInfo> {
    return this.transact(`add client ${input.name}`, (v) => rules.addClient(v, input, now));
  }

  getClient(name: string): ClientInfo | undefined {
    return this.state.client(name);
  }

  listClients(): readonly ClientInfo[] {
    return this.state.clients();
  }

  removeClient(name: string): Out<M, void> {
    return this.transact(`remove client ${name}`, (v) => rules.removeClient(v, name));
  }

  usage(): readonly PoolUsage[] {
    return rules.usage(this.state);
  }

  dump(): StoreDump {
    return rules.dumpOf(this.state);
  }

  #batch(): { batch?: number } {
    return this.batch !== undefined ? { batch: this.batch } : {};
  }

  // What an engine with nothing to reach, wait for or release answers.

  ping(): Awaitable<void> {}

  settle(): Awaitable<void> {}

  committed(): Awaitable<void> {}

  stats(): StoreStats {
    return { conflicts: this.conflicts };
  }

  close(): Awaitable<void> {
    this.feed.close();
  }
}

/** `f` of a value an engine answered at once, or of the promise of one. */
function andThen<T, U>(value: Awaitable<T>, f: (v: T) => Awaitable<U>): Awaitable<U> {
  return value instanceof Promise ? value.then(f) : f(value);
}
