/**
 * The cluster store's rules, once for every engine: pure functions of a
 * {@linkcode ClusterView} (and their inputs) that either throw the domain
 * error that says why not, or return the answer and the change set to
 * commit. Nothing here reads a clock, a random source or a database: the
 * time, new ids and hashes come in as inputs, and an engine decides only how
 * to read and how to commit atomically.
 */
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StaleStoreError,
  StoreCorruptError,
} from "../errors.ts";
import type { ClientInfo, NextKey, NodeInfo, NodeReport } from "../domain/cluster.ts";
import { addressFamily, joinHostPort, parseHostPort } from "../domain/address.ts";
import { IpamDraft, parseCidr } from "../ipam/mod.ts";
import {
  isResetHash,
  type PoolConfig,
  type PoolUsage,
  type Principal,
  type RegisterInput,
  type RegisterOutcome,
  type StoreDump,
  type TokenRecord,
} from "./cluster_store.ts";
import {
  type ClusterView,
  Draft,
  nodeInfo,
  type NodeRecord,
  type Planned,
  type StoredToken,
  tokenRecord,
} from "./cluster_view.ts";
import { ClusterPools } from "./cluster_pools.ts";

/** How long a removed node's subnets wait, and how much one change set may carry. */
export interface Policy {
  /** How long a removed node's subnets wait before they are handed out again. */
  readonly graceMs: number;
  /**
   * At most this many removals and returns to the pool in one change set
   * (an etcd transaction has a bounded number of operations); the rest is
   * left for the next call. Unbounded when absent.
   */
  readonly batch?: number;
}

// --- nodes ---

/** The host part of `IP:PORT` or `[IPv6]:PORT` (checked by the API's schema). */
function endpointHost(endpoint: string): string {
  return parseHostPort(endpoint).host;
}

/**
 * The rule for registering a name that is already taken: only that node's
 * own credential, the admin token, or a join token after an admin reset.
 * A join token otherwise admits new names only, so holding one (and the
 * public key every node sees) is not enough to take a node over.
 */
function checkReregistration(
  name: string,
  principal: Principal,
  credentialHash: string,
): void {
  if (principal.kind === "admin") return;
  if (principal.kind === "node" && principal.name === name) return;
  if (principal.kind === "join" && isResetHash(credentialHash)) return;
  throw new AuthError(
    `Cannot register node ${name}: the name is already registered, and a join token admits only new names; show that node's credential or the admin token (for a node that lost its credential, an admin runs \`wgcni cluster node reset ${name}\`)`,
    { missing: false },
  );
}

/** Refuses a key another node or client holds: one key, one peer. */
function refuseHeldKey(view: ClusterView, what: string, publicKey: string): void {
  const holder = view.keyHolder(publicKey);
  if (holder !== undefined) {
    throw new ConflictError(
      `Cannot ${what}: the public key is already registered to ${holder.kind} ${holder.name}`,
    );
  }
}

/** Checks a join token again, inside the change, and uses it up when it is single-use. */
function consumeJoinToken(d: Draft, tokenId: string, now: number): void {
  const t = d.view.token(tokenId);
  if (t === undefined || t.kind !== "join") {
    throw new AuthError(`Cannot register: join token ${tokenId} was revoked`);
  }
  if (t.expiresAt !== null && t.expiresAt <= now) {
    throw new AuthError(`Cannot register: join token ${t.id} has expired`);
  }
  if (t.singleUse && t.used) {
    throw new AuthError(`Cannot register: single-use join token ${t.id} was already used`);
  }
  // Marked on its first use, so that `cluster token list` tells used tokens from idle ones.
  if (!t.used) d.putToken({ ...t, used: true });
}

/** Returns up to `limit` quarantined subnets whose grace period is over to the pool, earliest first. */
function releaseDue(d: Draft, now: number, limit: number): { released: number; more: boolean } {
  // One more than taken, to know whether more are due.
  const due = d.view.quarantineDue(now, limit + 1);
  const take = due.slice(0, limit);
  for (const q of take) {
    d.deleteQuarantine(q.subnet);
    d.pools.releaseSubnet(q.subnet);
  }
  return { released: take.length, more: due.length > take.length };
}

/** A node subnet of the family, or PoolExhaustedError saying how full the pool is and why. */
function allocateSubnet(d: Draft, family: 4 | 6, now: number): string {
  try {
    return d.pools.allocateSubnet(family);
  } catch (err) {
    if (!(err instanceof PoolExhaustedError)) throw err;
    const waiting = d.view.quarantined().filter((q) => q.family === family && q.releaseAt > now);
    const next = Math.min(...waiting.map((q) => q.releaseAt));
    const inUse = d.pools.usage().find((u) => u.pool === "pod" && u.family === family);
    const grace = waiting.length > 0
      ? `; ${waiting.length} of them wait out their grace period, the first until ${
        new Date(next).toISOString()
      }`
      : "";
    throw new PoolExhaustedError(
      `Cannot allocate a node subnet from ${d.pools.podPool(family)}: the pool is exhausted (${
        inUse?.used ?? "?"
      } of ${inUse?.total ?? "?"} subnets taken${grace})`,
    );
  }
}

/**
 * Registers a node or registers it again. A new name gets one subnet per pod
 * pool: the subnets it had when it comes back (same name and key) within its
 * grace period, otherwise fresh ones first, then the longest released. The
 * same name again keeps its subnets and needs that node's credential, the
 * admin token, or a join token after an admin reset; a new key is announced
 * as a delete of the old one, then an upsert. An endpoint inside a cluster
 * pool, and a key another node or client holds, are refused. A join token is
 * checked again and a single-use one is used up in the same change set.
 */
export function registerNode(
  view: ClusterView,
  input: RegisterInput,
  options: {
    readonly principal: Principal;
    readonly credentialHash: string;
    readonly now: number;
    readonly batch?: number;
  },
): Planned<RegisterOutcome> {
  const { name, publicKey } = input;
  const { principal, credentialHash, now } = options;
  if (principal.kind === "node" && principal.name !== name) {
    throw new AuthError(
      `Cannot register node ${name}: the credential of node ${principal.name} may register only that node`,
      { missing: false },
    );
  }
  if (input.revision !== undefined && input.revision > view.revision()) {
    throw new StaleStoreError(
      `Cannot register node ${name}: this manager's store is at revision ${view.revision()}, behind revision ${input.revision} that the node already applied (the store lost committed changes?); nothing was changed. Put back the store it served from`,
    );
  }
  const existing = view.node(name);
  const { endpoint, nat } = publishedEndpoint(input, existing);
  for (const ep of new Set([input.endpoint, endpoint])) {
    const pool = view.layout.poolContaining(endpointHost(ep));
    if (pool !== undefined) {
      throw new RangeError(
        `Cannot register node ${name}: endpoint ${ep} is inside the cluster pool ${pool}; an endpoint must be an underlay address`,
      );
    }
  }
  const d = new Draft(view);
  if (principal.kind === "join") consumeJoinToken(d, principal.tokenId, now);
  if (existing !== undefined) {
    checkReregistration(name, principal, existing.credentialHash);
    // Its own next key finishes a rotation; any other new key ends one.
    const switching = existing.nextKey?.publicKey === publicKey;
    if (existing.publicKey !== publicKey && !switching) {
      refuseHeldKey(view, `register node ${name}`, publicKey);
    }
    const { nat: _, nextKey, mtu: __, ...was } = existing;
    const node: NodeRecord = {
      ...was,
      publicKey,
      endpoint,
      credentialHash,
      lastSeenAt: now,
      ...(nat ? { nat } : {}),
      ...(nextKey && existing.publicKey === publicKey ? { nextKey } : {}),
      ...(input.mtu !== undefined ? { mtu: input.mtu } : {}),
    };
    d.putNode(node);
    return d.done({ node: nodeInfo(node), created: false });
  }
  refuseHeldKey(view, `register node ${name}`, publicKey);
  const back = view.quarantinedFor(name).filter((q) =>
    q.publicKey === publicKey && q.releaseAt > now
  );
  releaseDue(d, now, options.batch ?? Infinity);
  const subnets = d.pools.podFamilies().map((family) => {
    const mine = back.find((q) => q.family === family);
    if (mine === undefined) return allocateSubnet(d, family, now);
    d.deleteQuarantine(mine.subnet);
    return mine.subnet;
  });
  const node: NodeRecord = {
    name,
    publicKey,
    endpoint,
    subnets,
    credentialHash,
    registeredAt: now,
    lastSeenAt: now,
    ...(nat ? { nat } : {}),
    ...(input.mtu !== undefined ? { mtu: input.mtu } : {}),
  };
  d.putNode(node);
  return d.done({ node: nodeInfo(node), created: true });
}

/**
 * The endpoint others are given for a registering node. A node that found
 * its address itself and was seen coming from another address of the same
 * family is behind NAT: it is given that address with its own port (the
 * mapping a port-preserving NAT makes), or the endpoint it had, when that
 * is on the same address (what another node saw of it since). Otherwise
 * the node's own endpoint.
 */
export function publishedEndpoint(
  input: Pick<RegisterInput, "endpoint" | "detectEndpoint" | "seenFrom">,
  existing?: Pick<NodeRecord, "endpoint" | "nat">,
): { endpoint: string; nat: boolean } {
  const own = parseHostPort(input.endpoint);
  const seen = input.seenFrom;
  if (
    !input.detectEndpoint || seen === undefined || seen === own.host ||
    addressFamily(seen) !== addressFamily(own.host) || isLoopback(seen)
  ) {
    return { endpoint: input.endpoint, nat: false };
  }
  if (existing?.nat && endpointHost(existing.endpoint) === seen) {
    return { endpoint: existing.endpoint, nat: true };
  }
  return { endpoint: joinHostPort(seen, own.port), nat: true };
}

function isLoopback(address: string): boolean {
  return address === "::1" || address.startsWith("127.");
}

/**
 * What another node (`by`) saw a NAT'd node's handshakes come from: that
 * becomes the NAT'd node's endpoint, so that nodes behind NAT reach each
 * other there. Only for a node behind NAT, never from the node itself.
 */
export function observeEndpoint(
  view: ClusterView,
  name: string,
  endpoint: string,
  by: Principal,
): Planned<NodeInfo> {
  const n = mustExist(view, name, "record an endpoint of");
  if (by.kind === "node" && by.name === name) {
    throw new AuthError(
      `Cannot record an endpoint of node ${name}: it is what other nodes saw of it, not what it says`,
      { missing: false },
    );
  }
  if (!n.nat) {
    throw new ConflictError(
      `Cannot record an endpoint of node ${name}: it is not behind NAT, its endpoint is its own (${n.endpoint})`,
    );
  }
  const pool = view.layout.poolContaining(endpointHost(endpoint));
  if (pool !== undefined) {
    throw new RangeError(
      `Cannot record endpoint ${endpoint} of node ${name}: it is inside the cluster pool ${pool}`,
    );
  }
  const d = new Draft(view);
  if (n.endpoint === endpoint) return d.done(nodeInfo(n));
  const node: NodeRecord = { ...n, endpoint };
  d.putNode(node);
  return d.done(nodeInfo(node));
}

/** How far ahead a node may set the switch to its next key. */
export const MAX_SWITCH_LEAD_MS = 3_600_000;

/**
 * Announces a node's next key and when every node moves to it (see
 * {@linkcode NextKey}). Only the node itself, which alone holds the private
 * key; the same announcement again changes nothing. Refused: a key another
 * node or client holds, the node's current key, a moment that is not ahead
 * (or more than an hour ahead), and a new announcement once the moment of a
 * pending one has passed (the node must register with that key first).
 */
export function announceKey(
  view: ClusterView,
  name: string,
  next: NextKey,
  options: { readonly principal: Principal; readonly now: number },
): Planned<NodeInfo> {
  const { principal, now } = options;
  if (principal.kind !== "node" || principal.name !== name) {
    throw new AuthError(
      `Cannot announce a key of node ${name}: only that node, which holds the private key, may`,
      { missing: false },
    );
  }
  const n = mustExist(view, name, "announce a key of");
  const what = `announce key ${next.publicKey} of node ${name}`;
  if (n.publicKey === next.publicKey) {
    throw new ConflictError(`Cannot ${what}: it is the node's key already`);
  }
  const pending = n.nextKey;
  const d = new Draft(view);
  if (pending?.publicKey === next.publicKey && pending.switchAt === next.switchAt) {
    return d.done(nodeInfo(n));
  }
  if (pending !== undefined && pending.switchAt <= now) {
    throw new ConflictError(
      `Cannot ${what}: the switch to key ${pending.publicKey} was due at ${
        new Date(pending.switchAt).toISOString()
      }; the node registers with that key first`,
    );
  }
  if (pending?.publicKey !== next.publicKey) refuseHeldKey(view, what, next.publicKey);
  if (!(next.switchAt > now && next.switchAt <= now + MAX_SWITCH_LEAD_MS)) {
    throw new RangeError(
      `Cannot ${what}: switchAt ${
        new Date(next.switchAt).toISOString()
      } must be ahead of now and at most an hour ahead`,
    );
  }
  const node: NodeRecord = {
    ...n,
    nextKey: { publicKey: next.publicKey, switchAt: next.switchAt },
  };
  d.putNode(node);
  return d.done(nodeInfo(node));
}

/** The node of that name, or NotFoundError saying what could not be done. */
function mustExist(view: ClusterView, name: string, what: string): NodeRecord {
  const n = view.node(name);
  if (n === undefined) throw new NotFoundError(`Cannot ${what} node ${name}: it is not registered`);
  return n;
}

/**
 * Replaces a node's credential hash with `credentialHash` (one that no
 * credential matches, see `resetCredentialHash`), so that a join token may
 * register the name once more. Subnets, key and endpoint stay: peers see
 * nothing.
 */
export function resetNode(
  view: ClusterView,
  name: string,
  credentialHash: string,
): Planned<NodeInfo> {
  const n = mustExist(view, name, "reset");
  const d = new Draft(view);
  d.putNode({ ...n, credentialHash });
  return d.done(nodeInfo(n));
}

/** Renews a node's lease. */
export function heartbeat(
  view: ClusterView,
  name: string,
  now: number,
  report?: NodeReport,
): Planned<NodeInfo> {
  const n = mustExist(view, name, "renew the lease of");
  const d = new Draft(view);
  const node = { ...n, lastSeenAt: now, ...report };
  d.putNode(node);
  return d.done(nodeInfo(node));
}

/** Removes a node in a draft: its subnets wait out the grace period. */
function dropNode(d: Draft, n: NodeRecord, now: number, graceMs: number): void {
  d.deleteNode(n.name);
  for (const subnet of n.subnets) {
    d.putQuarantine({
      subnet,
      family: d.view.layout.locate(subnet)?.slot.cidr.family ?? parseCidr(subnet).family,
      name: n.name,
      publicKey: n.publicKey,
      releaseAt: now + graceMs,
    });
  }
}

/** Removes a node; its subnets return to the pool after the grace period. */
export function removeNode(
  view: ClusterView,
  name: string,
  options: Policy & { readonly now: number },
): Planned<void> {
  const n = mustExist(view, name, "remove");
  const d = new Draft(view);
  dropNode(d, n, options.now, options.graceMs);
  return d.done(undefined);
}

/**
 * Removes nodes not seen since `now - leaseMs` and returns quarantined
 * subnets whose grace period is over to the pool, at most `batch` of each
 * (`released` counts those); `more` says that another call has more to do.
 */
export function expire(
  view: ClusterView,
  options: Policy & { readonly now: number; readonly leaseMs: number },
): Planned<
  { readonly removed: readonly string[]; readonly released: number; readonly more: boolean }
> {
  const { now, graceMs } = options;
  const limit = options.batch ?? Infinity;
  const d = new Draft(view);
  const stale = view.nodesSeenBefore(now - options.leaseMs, limit + 1);
  const removed = stale.slice(0, limit);
  for (const n of removed) dropNode(d, n, now, graceMs);
  const released = releaseDue(d, now, limit);
  return d.done({
    removed: removed.map((n) => n.name),
    released: released.released,
    more: stale.length > removed.length || released.more,
  });
}

// --- clients ---

/** Registers an external client with one address per client pool. */
export function addClient(
  view: ClusterView,
  input: { readonly name: string; readonly publicKey: string },
  now: number,
): Planned<ClientInfo> {
  const { name, publicKey } = input;
  const d = new Draft(view);
  const families = d.pools.clientFamilies();
  if (families.length === 0) {
    throw new ConflictError(
      `Cannot add client ${name}: the cluster has no client pool (start the manager with --client-cidr)`,
    );
  }
  if (view.client(name) !== undefined) {
    throw new ConflictError(`Cannot add client ${name}: a client of that name exists`);
  }
  refuseHeldKey(view, `add client ${name}`, publicKey);
  const addresses = families.map((family) => {
    try {
      return d.pools.allocateClient(family);
    } catch (err) {
      if (!(err instanceof PoolExhaustedError)) throw err;
      const u = d.pools.usage().find((x) => x.pool === "client" && x.family === family);
      throw new PoolExhaustedError(
        `Cannot add client ${name}: the client pool ${u?.cidr} is exhausted (${u?.used} of ${u?.total} addresses taken)`,
      );
    }
  });
  const client: ClientInfo = { name, publicKey, addresses, createdAt: now };
  d.putClient(client);
  return d.done(client);
}

/** Removes a client; its addresses go back to the pool at once. */
export function removeClient(view: ClusterView, name: string): Planned<void> {
  const c = view.client(name);
  if (c === undefined) throw new NotFoundError(`Cannot remove client ${name}: no such client`);
  const d = new Draft(view);
  d.deleteClient(name);
  for (const a of c.addresses) d.pools.releaseClient(a);
  return d.done(undefined);
}

// --- tokens and flags ---

/** Sets a token with a chosen id (replacing it, and any other token with the same secret). */
export function putToken(
  view: ClusterView,
  input: {
    readonly id: string;
    readonly kind: "admin" | "join";
    readonly hash: string;
    readonly now: number;
  },
): Planned<TokenRecord> {
  const d = new Draft(view);
  const other = view.tokenByHash(input.hash);
  if (other !== undefined && other.id !== input.id) d.deleteToken(other.id);
  const token: StoredToken = {
    id: input.id,
    kind: input.kind,
    hash: input.hash,
    expiresAt: null,
    singleUse: false,
    used: false,
    createdAt: input.now,
  };
  d.putToken(token);
  return d.done(tokenRecord(token));
}

/** Creates a join token under a new id. */
export function createToken(
  view: ClusterView,
  input: {
    readonly id: string;
    readonly hash: string;
    readonly now: number;
    readonly ttlMs?: number;
    readonly singleUse?: boolean;
  },
): Planned<TokenRecord> {
  if (view.token(input.id) !== undefined || view.tokenByHash(input.hash) !== undefined) {
    throw new ConflictError(`Cannot create token ${input.id}: that id or secret is taken`);
  }
  const d = new Draft(view);
  const token: StoredToken = {
    id: input.id,
    kind: "join",
    hash: input.hash,
    expiresAt: input.ttlMs === undefined ? null : input.now + input.ttlMs,
    singleUse: input.singleUse === true,
    used: false,
    createdAt: input.now,
  };
  d.putToken(token);
  return d.done(tokenRecord(token));
}

/** Removes a join token (the admin token is not revoked this way). */
export function revokeToken(view: ClusterView, id: string): Planned<void> {
  if (view.token(id)?.kind !== "join") {
    throw new NotFoundError(`Cannot revoke join token ${id}: no such token`);
  }
  const d = new Draft(view);
  d.deleteToken(id);
  return d.done(undefined);
}

/** Sets a flag of the store's own bookkeeping. */
export function setFlag(view: ClusterView, key: string, value: string): Planned<void> {
  const d = new Draft(view);
  d.setFlag(key, value);
  return d.done(undefined);
}

/** Sets a flag only when it is absent; the answer says whether this call set it. */
export function initFlag(view: ClusterView, key: string, value: string): Planned<boolean> {
  const d = new Draft(view);
  if (view.flag(key) !== undefined) return d.done(false);
  d.setFlag(key, value);
  return d.done(true);
}

// --- reads over a view ---

/** The pools of a view, for reading only. */
function readPools(view: ClusterView): ClusterPools {
  return new ClusterPools(view.layout, (ns) => new IpamDraft(view.ipam(ns)));
}

/** Use of every pool. */
export function usage(view: ClusterView): readonly PoolUsage[] {
  return readPools(view).usage();
}

/** Everything in the view, secrets as hashes, in a stable order (what migration moves). */
export function dumpOf(view: ClusterView): StoreDump {
  return {
    pools: view.layout.config,
    flags: Object.fromEntries(view.flags()),
    tokens: view.tokens().map((t) => ({ ...tokenRecord(t), hash: t.hash })),
    nodes: view.nodes().map((n) => ({ ...nodeInfo(n), credentialHash: n.credentialHash })),
    clients: view.clients().map((c) => ({ ...c, addresses: [...c.addresses] })),
    quarantine: view.quarantined().map((q) => ({
      subnet: q.subnet,
      name: q.name,
      publicKey: q.publicKey,
      releaseAt: q.releaseAt,
    })),
  };
}

/**
 * The change set that creates everything of `dump` in an empty view of the
 * same pools: each subnet and address bound to its item in its pool.
 */
export function fromDump(view: ClusterView, dump: StoreDump): Planned<number> {
  const d = new Draft(view);
  for (const [k, v] of Object.entries(dump.flags)) d.setFlag(k, v);
  for (const t of dump.tokens) d.putToken(t);
  const claim = (item: string) => d.pools.claim(item);
  for (const { credentialHash, ...n } of dump.nodes) {
    d.putNode({ ...n, credentialHash });
    n.subnets.forEach(claim);
  }
  for (const c of dump.clients) {
    d.putClient(c);
    c.addresses.forEach(claim);
  }
  for (const q of dump.quarantine) {
    d.putQuarantine({ ...q, family: parseCidr(q.subnet).family });
    claim(q.subnet);
  }
  return d.done(dump.nodes.length + dump.clients.length);
}

function describePools(p: PoolConfig): string {
  const clients = p.clientCidrs.length ? p.clientCidrs.join(", ") : "none";
  return `pod pools ${
    p.podCidrs.join(", ")
  } (node subnets /${p.nodeMaskV4} and /${p.nodeMaskV6}), client pools ${clients}`;
}

/**
 * Refuses (StoreCorruptError) to open `store` with other pools than it was
 * created with while it holds nodes, clients or quarantined subnets: what
 * it holds would be numbered anew. An empty store may change its pools.
 */
export function checkSamePools(
  store: string,
  stored: PoolConfig | undefined,
  wanted: PoolConfig,
  holds: boolean,
): void {
  const key = (p: PoolConfig) =>
    JSON.stringify([p.podCidrs, p.clientCidrs, p.nodeMaskV4, p.nodeMaskV6]);
  if (stored === undefined || !holds || key(stored) === key(wanted)) return;
  throw new StoreCorruptError(
    `Cannot open ${store} with ${describePools(wanted)}: it was created with ${
      describePools(stored)
    } and holds nodes or clients; changing the pools of a running cluster is not supported`,
  );
}

/**
 * Refuses (StoreCorruptError) a view whose pools lost what its records hold:
 * serving it would hand out subnets and addresses already in use.
 */
export function checkHoldings(view: ClusterView): void {
  const held: { what: string; item: string }[] = [];
  for (const n of view.nodes()) {
    for (const s of n.subnets) held.push({ what: `node ${n.name}`, item: s });
  }
  for (const c of view.clients()) {
    for (const a of c.addresses) held.push({ what: `client ${c.name}`, item: a });
  }
  for (const q of view.quarantined()) {
    held.push({ what: `removed node ${q.name} (in its grace period)`, item: q.subnet });
  }
  const pools = readPools(view);
  const lost = held.find((h) => !pools.isAllocated(h.item));
  if (lost !== undefined) {
    throw new StoreCorruptError(
      `Cannot open the cluster store: ${lost.item} of ${lost.what} is not allocated in its pool; the pool state is damaged or belongs to other pools`,
    );
  }
}
