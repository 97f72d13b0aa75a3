/**
 * The cluster's address pools inside the cluster database: node subnets
 * carved from each pod pool ({@linkcode SubnetPool}), client addresses from
 * each client pool ({@linkcode AddressAllocator}), each pool in its own
 * namespace of {@linkcode SqliteIpamStore} so an allocation commits with the
 * row that holds it.
 *
 * Who holds a subnet or an address is the cluster store's business (a node
 * row, a client row, the quarantine); the pools only hand out and take back.
 * Every allocation therefore gets an owner of its own, and a release finds
 * that owner by the subnet or address.
 */
import type { DatabaseSync } from "node:sqlite";
import {
  AddressAllocator,
  bitsOf,
  type Cidr,
  cidrSize,
  contains,
  type Family,
  formatAddress,
  formatCidr,
  hostCidr,
  overlaps,
  parseAddress,
  parseCidr,
  specialRangeOf,
  SubnetPool,
} from "../ipam/mod.ts";
import { StoreCorruptError } from "../errors.ts";
import { SqliteIpamStore } from "./sqlite_ipam.ts";
import type { PoolConfig, PoolUsage } from "./cluster_store.ts";

/** What the cluster store needs from its pools. */
export interface ClusterPools {
  /** Families with a pod pool, IPv4 first. */
  podFamilies(): readonly Family[];
  /** Families with a client pool, IPv4 first. */
  clientFamilies(): readonly Family[];
  /** The pod pool of a family. */
  podPool(family: Family): string;
  /** A free node subnet of the family; PoolExhaustedError when none is left. */
  allocateSubnet(family: Family): string;
  /** Returns a node subnet to its pool (reused after every never-used one); no-op when not held. */
  releaseSubnet(subnet: string): void;
  /** A free client address (`/32` or `/128`) of the family; PoolExhaustedError when none is left. */
  allocateClient(family: Family): string;
  /** Returns a client address to its pool; no-op when not held. */
  releaseClient(address: string): void;
  /** True when the node subnet or client address (`/32`, `/128`) is handed out. */
  isAllocated(cidr: string): boolean;
  /** The pool (pod or client) an address falls in, if any. */
  poolContaining(address: string): string | undefined;
  usage(): readonly PoolUsage[];
}

/** Tables of an allocator this store no longer reads; their rows would be lost silently. */
const FORMER_TABLES = ["cluster_pool_items", "cluster_pool_cursor"];

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

/** A new owner name: the cluster store, not the pool, knows who holds what. */
function newOwner(): string {
  return crypto.randomUUID();
}

interface PodSlot {
  readonly text: string;
  readonly cidr: Cidr;
  readonly pool: SubnetPool;
  readonly store: SqliteIpamStore;
}

interface ClientSlot {
  readonly text: string;
  readonly cidr: Cidr;
  readonly pool: AddressAllocator;
}

class SqliteClusterPools implements ClusterPools {
  readonly #pods: readonly PodSlot[];
  readonly #clients: readonly ClientSlot[];

  constructor(db: DatabaseSync, config: PoolConfig) {
    for (const table of FORMER_TABLES) {
      const found = db.prepare("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(table);
      if (found !== undefined) {
        throw new StoreCorruptError(
          `Cannot open the cluster store: table ${table} is from an earlier development build that kept the pools differently; empty the data directory to create a new cluster`,
        );
      }
    }
    this.#pods = config.podCidrs.map((text) => {
      const cidr = parseCidr(text);
      const mask = cidr.family === 4 ? config.nodeMaskV4 : config.nodeMaskV6;
      // The mask is part of the namespace: indices of another mask mean other subnets.
      const store = new SqliteIpamStore(db, `cluster/pod/${text}/${mask}`);
      return { text, cidr, pool: new SubnetPool(cidr, mask, store), store };
    });
    this.#clients = config.clientCidrs.map((text) => {
      const cidr = parseCidr(text);
      const store = new SqliteIpamStore(db, `cluster/client/${text}`);
      // A client has no gateway on its pool: only the network and broadcast addresses are kept back.
      const pool = new AddressAllocator(cidr, store, {
        reserveNetwork: cidrSize(cidr) > 2n,
        reserveGateway: false,
      });
      return { text, cidr, pool };
    });
  }

  podFamilies(): readonly Family[] {
    return this.#pods.map((s) => s.cidr.family);
  }

  clientFamilies(): readonly Family[] {
    return this.#clients.map((s) => s.cidr.family);
  }

  podPool(family: Family): string {
    return this.#pods.find((s) => s.cidr.family === family)?.text ?? "";
  }

  allocateSubnet(family: Family): string {
    const slot = this.#pods.find((s) => s.cidr.family === family);
    if (slot === undefined) {
      throw new RangeError(
        `Cannot allocate a node subnet: the cluster has no IPv${family} pod pool`,
      );
    }
    return slot.pool.allocate(newOwner());
  }

  releaseSubnet(subnet: string): void {
    const found = this.#subnetOwner(subnet);
    if (found !== undefined) found.slot.pool.release(found.owner);
  }

  allocateClient(family: Family): string {
    const slot = this.#clients.find((s) => s.cidr.family === family);
    if (slot === undefined) {
      throw new RangeError(
        `Cannot allocate a client address: the cluster has no IPv${family} client pool`,
      );
    }
    return hostCidr(family, parseAddress(slot.pool.allocate(newOwner())).value);
  }

  releaseClient(address: string): void {
    const found = this.#clientOwner(address);
    if (found !== undefined) found.slot.pool.release(found.owner);
  }

  isAllocated(cidr: string): boolean {
    return this.#subnetOwner(cidr) !== undefined || this.#clientOwner(cidr) !== undefined;
  }

  poolContaining(address: string): string | undefined {
    const a = addressOf(address);
    if (a === undefined) return undefined;
    return [...this.#pods, ...this.#clients].find((s) => contains(s.cidr, a))?.text;
  }

  usage(): readonly PoolUsage[] {
    const row = (pool: "pod" | "client", s: PodSlot | ClientSlot): PoolUsage => {
      const used = s.pool.used();
      return {
        pool,
        family: s.cidr.family,
        cidr: s.text,
        used: Number(used),
        total: Number(used + s.pool.free()),
      };
    };
    return [...this.#pods.map((s) => row("pod", s)), ...this.#clients.map((s) => row("client", s))];
  }

  /** The pod pool and owner of a node subnet, if it is handed out. */
  #subnetOwner(text: string): { slot: PodSlot; owner: string } | undefined {
    let subnet: Cidr;
    try {
      subnet = parseCidr(text);
    } catch {
      return undefined;
    }
    const slot = this.#pods.find((s) => contains(s.cidr, subnet) && s.pool.mask === subnet.prefix);
    if (slot === undefined) return undefined;
    const index = (subnet.base - slot.cidr.base) >> BigInt(bitsOf(subnet.family) - subnet.prefix);
    const owner = slot.store.ownerAt(index);
    return owner === undefined ? undefined : { slot, owner };
  }

  /** The client pool and owner of a client address (`/32`, `/128`), if it is handed out. */
  #clientOwner(text: string): { slot: ClientSlot; owner: string } | undefined {
    let host: Cidr;
    try {
      host = parseCidr(text);
    } catch {
      return undefined;
    }
    if (host.prefix !== bitsOf(host.family)) return undefined;
    const slot = this.#clients.find((s) => contains(s.cidr, host));
    const owner = slot?.pool.ownerOf(formatAddress(host.family, host.base));
    return slot === undefined || owner === undefined ? undefined : { slot, owner };
  }
}

/**
 * The pools of `config` in `db`. Creates lib/ipam's tables on first use, so
 * call it inside a transaction.
 */
export function openClusterPools(db: DatabaseSync, config: PoolConfig): ClusterPools {
  return new SqliteClusterPools(db, config);
}
