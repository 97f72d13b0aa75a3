/**
 * The cluster's address pools: node subnets carved from each pod pool
 * ({@linkcode SubnetPool}), client addresses from each client pool
 * ({@linkcode AddressAllocator}), each pool in its own IPAM namespace.
 * {@linkcode PoolLayout} is the arithmetic (which pool and index a subnet
 * or address is); {@linkcode ClusterPools} hands out and takes back over
 * whatever IPAM stores it is given: the rules give it drafts over an
 * engine's view, so every engine allocates in the same order.
 *
 * Who holds a subnet or an address is the cluster store's business (a node,
 * a client, the quarantine); the pools only hand out and take back. Each
 * allocation is bound to an owner named after the subnet or address itself,
 * and a release finds the owner by the subnet or address (stores written
 * before kept random owner names; those are found the same way).
 */
import {
  AddressAllocator,
  bitsOf,
  type Cidr,
  cidrSize,
  contains,
  type Family,
  formatCidr,
  hostCidr,
  type IpamStore,
  overlaps,
  parseAddress,
  parseCidr,
  specialRangeOf,
  SubnetPool,
} from "../ipam/mod.ts";
import { ConflictError } from "../errors.ts";
import type { PoolConfig, PoolUsage } from "./cluster_store.ts";

/** A pool setting as parsed, or a RangeError that says what is wrong with it. */
function parsePool(text: string, flag: string): Cidr {
  try {
    return parseCidr(text);
  } catch {
    // Say which network was meant when only the host bits are wrong.
    const m = /^([^/]+)\/(\d{1,3})$/.exec(text);
    let address;
    try {
      address = m === null ? undefined : parseAddress(m[1]!);
    } catch {
      address = undefined;
    }
    const prefix = Number(m?.[2]);
    if (address !== undefined && prefix <= bitsOf(address.family)) {
      const hostBits = BigInt(bitsOf(address.family) - prefix);
      const base = (address.value >> hostBits) << hostBits;
      throw new RangeError(
        `Cannot use ${flag} ${text}: it has bits set after the prefix (did you mean ${
          formatCidr({ family: address.family, base, prefix })
        }?)`,
      );
    }
    throw new RangeError(
      `Cannot use ${flag} ${text}: it is not a CIDR (ADDRESS/PREFIX, a prefix length of at most 32 for IPv4 and 128 for IPv6)`,
    );
  }
}

/**
 * Checks and normalises pool settings: canonical CIDRs, at most one pool per
 * family and kind, IPv4 first, no overlap between any two pools, node masks
 * that fit their pools. Throws RangeError saying what is wrong.
 */
export function normalizePools(input: PoolConfig): PoolConfig {
  const norm = (list: readonly string[], flag: string) => {
    const parsed = list.map((text) => ({ text, cidr: parsePool(text, flag) }));
    const families = parsed.map((x) => x.cidr.family);
    if (new Set(families).size !== families.length) {
      throw new RangeError(`Cannot use ${flag}s ${list.join(", ")}: give at most one per family`);
    }
    return parsed.sort((a, b) => a.cidr.family - b.cidr.family);
  };
  const pods = norm(input.podCidrs, "--pod-cidr");
  if (pods.length === 0) throw new RangeError("Cannot serve without a pod pool: give --pod-cidr");
  const clients = norm(input.clientCidrs, "--client-cidr");
  const all = [...pods, ...clients];
  for (const { text, cidr } of all) {
    const special = specialRangeOf(cidr);
    if (special !== undefined) {
      throw new RangeError(
        `Cannot use pool ${text}: it overlaps ${special.what} ${special.text}, where no pod or client can be reached`,
      );
    }
  }
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      if (overlaps(all[i]!.cidr, all[j]!.cidr)) {
        throw new RangeError(`Cannot use pools ${all[i]!.text} and ${all[j]!.text}: they overlap`);
      }
    }
  }
  for (const { text, cidr } of pods) {
    const mask = cidr.family === 4 ? input.nodeMaskV4 : input.nodeMaskV6;
    const flag = cidr.family === 4 ? "--node-mask-v4" : "--node-mask-v6";
    if (mask < cidr.prefix) {
      throw new RangeError(
        `Cannot carve /${mask} node subnets (${flag}) from ${text}: the pool is smaller`,
      );
    }
    const most = bitsOf(cidr.family) - 2;
    if (mask > most) {
      throw new RangeError(
        `Cannot use ${flag} ${mask}: a node subnet needs room for pods (at most /${most})`,
      );
    }
  }
  return {
    podCidrs: pods.map(({ cidr }) => formatCidr(cidr)),
    clientCidrs: clients.map(({ cidr }) => formatCidr(cidr)),
    nodeMaskV4: input.nodeMaskV4,
    nodeMaskV6: input.nodeMaskV6,
  };
}

/** The address itself, IPv4-mapped IPv6 read as IPv4; undefined when it does not parse. */
function addressOf(text: string): { family: Family; value: bigint } | undefined {
  let a;
  try {
    a = parseAddress(text);
  } catch {
    return undefined;
  }
  if (a.family === 6 && a.value >> 32n === 0xffffn) {
    return { family: 4, value: a.value & 0xffffffffn };
  }
  return a;
}

/** One pool of a cluster and how its items are numbered. */
export interface PoolSlot {
  readonly kind: "pod" | "client";
  readonly text: string;
  readonly cidr: Cidr;
  /** The pool's IPAM namespace; the node mask is part of it (another mask numbers other subnets). */
  readonly namespace: string;
  /** Prefix length of one item: the node mask, or the full length for a client address. */
  readonly itemPrefix: number;
  /** Items from `first` to before `end` can be handed out (a client pool keeps back its network and broadcast addresses). */
  readonly first: bigint;
  readonly end: bigint;
}

/** The pools of a {@linkcode PoolConfig}, parsed once. */
export class PoolLayout {
  readonly config: PoolConfig;
  readonly slots: readonly PoolSlot[];
  readonly #located = new Map<string, { slot: PoolSlot; index: bigint } | null>();

  constructor(config: PoolConfig) {
    this.config = config;
    const slot = (kind: "pod" | "client", text: string): PoolSlot => {
      const cidr = parseCidr(text);
      const mask = cidr.family === 4 ? config.nodeMaskV4 : config.nodeMaskV6;
      const itemPrefix = kind === "pod" ? mask : bitsOf(cidr.family);
      const count = 1n << BigInt(itemPrefix - cidr.prefix);
      const reserve = kind === "client" && cidrSize(cidr) > 2n;
      return {
        kind,
        text,
        cidr,
        namespace: kind === "pod" ? `cluster/pod/${text}/${mask}` : `cluster/client/${text}`,
        itemPrefix,
        first: reserve ? 1n : 0n,
        end: reserve && cidr.family === 4 ? count - 1n : count,
      };
    };
    this.slots = [
      ...config.podCidrs.map((t) => slot("pod", t)),
      ...config.clientCidrs.map((t) => slot("client", t)),
    ];
  }

  /** Families with a pool of the kind, IPv4 first. */
  families(kind: "pod" | "client"): readonly Family[] {
    return this.slots.filter((s) => s.kind === kind).map((s) => s.cidr.family);
  }

  slot(kind: "pod" | "client", family: Family): PoolSlot | undefined {
    return this.slots.find((s) => s.kind === kind && s.cidr.family === family);
  }

  /** The pool and index of a node subnet or client address (`/32`, `/128`); undefined when it is neither. */
  locate(item: string): { slot: PoolSlot; index: bigint } | undefined {
    // Parsing is the cost of most reads and writes here: remember the items seen.
    let at = this.#located.get(item);
    if (at === undefined) {
      if (this.#located.size >= 100_000) this.#located.clear();
      this.#located.set(item, at = this.#locate(item) ?? null);
    }
    return at ?? undefined;
  }

  #locate(item: string): { slot: PoolSlot; index: bigint } | undefined {
    let c: Cidr;
    try {
      c = parseCidr(item);
    } catch {
      return undefined;
    }
    const slot = this.slots.find((s) => s.itemPrefix === c.prefix && contains(s.cidr, c));
    if (slot === undefined) return undefined;
    return { slot, index: (c.base - slot.cidr.base) >> BigInt(bitsOf(c.family) - c.prefix) };
  }

  /** The subnet or address at `index` of a pool. */
  itemAt(slot: PoolSlot, index: bigint): string {
    const base = slot.cidr.base + (index << BigInt(bitsOf(slot.cidr.family) - slot.itemPrefix));
    return slot.kind === "client"
      ? hostCidr(slot.cidr.family, base)
      : formatCidr({ family: slot.cidr.family, base, prefix: slot.itemPrefix });
  }

  /** The pool (pod or client) an address falls in, if any. */
  poolContaining(address: string): string | undefined {
    const a = addressOf(address);
    return a === undefined ? undefined : this.slots.find((s) => contains(s.cidr, a))?.text;
  }
}

/** An owner no store keeps: allocations are bound to it only until they are named. */
const UNNAMED = "\u0000unnamed";

/** Hands out and takes back subnets and addresses of a {@linkcode PoolLayout}. */
export class ClusterPools {
  readonly layout: PoolLayout;
  readonly #ipamOf: (namespace: string) => IpamStore;
  readonly #allocators = new Map<string, SubnetPool | AddressAllocator>();

  constructor(layout: PoolLayout | PoolConfig, ipamOf: (namespace: string) => IpamStore) {
    this.layout = layout instanceof PoolLayout ? layout : new PoolLayout(layout);
    this.#ipamOf = ipamOf;
  }

  /** Families with a pod pool, IPv4 first. */
  podFamilies(): readonly Family[] {
    return this.layout.families("pod");
  }

  /** Families with a client pool, IPv4 first. */
  clientFamilies(): readonly Family[] {
    return this.layout.families("client");
  }

  /** The pod pool of a family. */
  podPool(family: Family): string {
    return this.layout.slot("pod", family)?.text ?? "";
  }

  /** A free node subnet of the family: a never-used one first, then the longest released; PoolExhaustedError when none is left. */
  allocateSubnet(family: Family): string {
    return this.#allocate("pod", family);
  }

  /** A free client address (`/32` or `/128`) of the family, in the same order; PoolExhaustedError when none is left. */
  allocateClient(family: Family): string {
    return this.#allocate("client", family);
  }

  /** Returns a node subnet to its pool (reused after every never-used one); no-op when not held. */
  releaseSubnet(subnet: string): void {
    this.#release(subnet);
  }

  /** Returns a client address to its pool; no-op when not held. */
  releaseClient(address: string): void {
    this.#release(address);
  }

  /**
   * Binds exactly this subnet or address (a holding copied from elsewhere);
   * RangeError when it is in none of the pools, ConflictError when another
   * owner holds it.
   */
  claim(item: string): void {
    const at = this.layout.locate(item);
    if (at === undefined) {
      throw new RangeError(
        `Cannot claim ${item}: it is in none of the pools ${
          this.layout.slots.map((s) => s.text).join(", ")
        }`,
      );
    }
    const store = this.#ipamOf(at.slot.namespace);
    if (store.ownerAt(at.index) === item) return;
    if (store.ownerAt(at.index) !== undefined) {
      throw new ConflictError(`Cannot claim ${item}: ${store.ownerAt(at.index)} holds it`);
    }
    store.bind(item, at.index);
    if (store.cursor() <= at.index) store.setCursor(at.index + 1n);
  }

  /** True when the node subnet or client address (`/32`, `/128`) is handed out. */
  isAllocated(item: string): boolean {
    const at = this.layout.locate(item);
    return at !== undefined && this.#ipamOf(at.slot.namespace).ownerAt(at.index) !== undefined;
  }

  /** The pool (pod or client) an address falls in, if any. */
  poolContaining(address: string): string | undefined {
    return this.layout.poolContaining(address);
  }

  usage(): readonly PoolUsage[] {
    return this.layout.slots.map((s) => {
      const a = this.#allocator(s);
      const used = a.used();
      return {
        pool: s.kind,
        family: s.cidr.family,
        cidr: s.text,
        used: Number(used),
        total: Number(used + a.free()),
      };
    });
  }

  #allocator(slot: PoolSlot): SubnetPool | AddressAllocator {
    let a = this.#allocators.get(slot.namespace);
    if (a === undefined) {
      const store = this.#ipamOf(slot.namespace);
      // A client has no gateway on its pool: only the network and broadcast addresses are kept back.
      a = slot.kind === "pod"
        ? new SubnetPool(slot.cidr, slot.itemPrefix, store)
        : new AddressAllocator(slot.cidr, store, {
          reserveNetwork: cidrSize(slot.cidr) > 2n,
          reserveGateway: false,
        });
      this.#allocators.set(slot.namespace, a);
    }
    return a;
  }

  #allocate(kind: "pod" | "client", family: Family): string {
    const slot = this.layout.slot(kind, family);
    if (slot === undefined) {
      throw new RangeError(
        `Cannot allocate a ${
          kind === "pod" ? "node subnet" : "client address"
        }: the cluster has no IPv${family} ${kind} pool`,
      );
    }
    const got = this.#allocator(slot).allocate(UNNAMED);
    const item = kind === "pod" ? got : hostCidr(family, parseAddress(got).value);
    // Named after itself, so that any engine finds the owner from the item alone.
    const store = this.#ipamOf(slot.namespace);
    const index = store.unbind(UNNAMED)!;
    store.bind(item, index);
    return item;
  }

  #release(item: string): void {
    const at = this.layout.locate(item);
    if (at === undefined) return;
    const owner = this.#ipamOf(at.slot.namespace).ownerAt(at.index);
    if (owner !== undefined) this.#allocator(at.slot).release(owner);
  }
}
