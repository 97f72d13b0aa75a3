/**
 * The cluster's address pools inside the cluster database: node subnets
 * carved from each pod pool, client addresses from each client pool.
 *
 * PROVISIONAL: lib/ipam (SubnetPool, AddressAllocator, SqliteIpamStore) is
 * being written in parallel; this file keeps the narrow interface the store
 * needs and will delegate to lib/ipam once it lands. The interim
 * implementation below is deliberately simple.
 */
import type { DatabaseSync, StatementSync } from "node:sqlite";
import ipaddr from "ipaddr.js";
import { PoolExhaustedError } from "../errors.ts";
import type { PoolConfig, PoolUsage } from "./cluster_store.ts";

/** What the cluster store needs from its pools. */
export interface ClusterPools {
  /** Families with a pod pool, IPv4 first. */
  podFamilies(): readonly (4 | 6)[];
  /** Families with a client pool, IPv4 first. */
  clientFamilies(): readonly (4 | 6)[];
  /** The pod pool of a family. */
  podPool(family: 4 | 6): string;
  /** A free node subnet of the family; PoolExhaustedError when none is left. */
  allocateSubnet(family: 4 | 6): string;
  releaseSubnet(subnet: string): void;
  /** A free client address (`/32` or `/128`) of the family; PoolExhaustedError when none is left. */
  allocateClient(family: 4 | 6): string;
  releaseClient(address: string): void;
  /** The pool (pod or client) an address falls in, if any. */
  poolContaining(address: string): string | undefined;
  usage(): readonly PoolUsage[];
}

interface ParsedCidr {
  readonly family: 4 | 6;
  readonly base: bigint;
  /** True when the text had bits set after the prefix (e.g. 10.1.2.3/16). */
  readonly hostBits: boolean;
  readonly prefix: number;
  readonly bits: number;
}

function parse(cidr: string): ParsedCidr {
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  let prefix: number;
  try {
    [addr, prefix] = ipaddr.parseCIDR(cidr);
  } catch {
    throw new RangeError(`"${cidr}" is not a CIDR (ADDRESS/PREFIX)`);
  }
  const family = addr.kind() === "ipv6" ? 6 : 4;
  const bits = family === 6 ? 128 : 32;
  let value = 0n;
  for (const b of addr.toByteArray()) value = (value << 8n) | BigInt(b);
  const hostBits = BigInt(bits - prefix);
  const base = (value >> hostBits) << hostBits;
  return { family, base, hostBits: base !== value, prefix, bits };
}

function format(family: 4 | 6, value: bigint, prefix: number): string {
  const bytes: number[] = [];
  const n = family === 6 ? 16 : 4;
  for (let i = n - 1; i >= 0; i--) bytes.push(Number((value >> BigInt(i * 8)) & 0xffn));
  return `${ipaddr.fromByteArray(bytes).toString()}/${prefix}`;
}

function overlaps(a: ParsedCidr, b: ParsedCidr): boolean {
  if (a.family !== b.family) return false;
  const p = BigInt(a.bits - Math.min(a.prefix, b.prefix));
  return (a.base >> p) === (b.base >> p);
}

function contains(pool: ParsedCidr, address: string): boolean {
  if (!ipaddr.isValid(address)) return false;
  let addr = ipaddr.parse(address);
  if (addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
    addr = (addr as ipaddr.IPv6).toIPv4Address();
  }
  const family = addr.kind() === "ipv6" ? 6 : 4;
  if (family !== pool.family) return false;
  return overlaps(pool, parse(`${addr.toString()}/${pool.bits}`));
}

/**
 * Checks and normalises pool settings: canonical CIDRs, at most one pool per
 * family and kind, IPv4 first, no overlap between any two pools, node masks
 * that fit their pools. Throws RangeError saying what is wrong.
 */
export function normalizePools(input: PoolConfig): PoolConfig {
  const norm = (list: readonly string[], what: string) => {
    const parsed = list.map((c) => ({ text: c, p: parse(c) }));
    for (const { text, p } of parsed) {
      if (p.hostBits) {
        throw new RangeError(
          `Cannot use ${what} ${text}: it has bits set after the prefix (did you mean ${
            format(p.family, p.base, p.prefix)
          }?)`,
        );
      }
    }
    const families = parsed.map((x) => x.p.family);
    if (new Set(families).size !== families.length) {
      throw new RangeError(`Cannot use ${what}s ${list.join(", ")}: give at most one per family`);
    }
    return parsed.sort((a, b) => a.p.family - b.p.family);
  };
  const pods = norm(input.podCidrs, "--pod-cidr");
  if (pods.length === 0) throw new RangeError("Cannot serve without a pod pool: give --pod-cidr");
  const clients = norm(input.clientCidrs, "--client-cidr");
  const all = [...pods, ...clients];
  for (let i = 0; i < all.length; i++) {
    for (let j = i + 1; j < all.length; j++) {
      if (overlaps(all[i]!.p, all[j]!.p)) {
        throw new RangeError(`Cannot use pools ${all[i]!.text} and ${all[j]!.text}: they overlap`);
      }
    }
  }
  for (const { text, p } of pods) {
    const mask = p.family === 4 ? input.nodeMaskV4 : input.nodeMaskV6;
    const flag = p.family === 4 ? "--node-mask-v4" : "--node-mask-v6";
    if (mask < p.prefix) {
      throw new RangeError(
        `Cannot carve /${mask} node subnets (${flag}) from ${text}: the pool is smaller`,
      );
    }
    if (mask > p.bits - 2) {
      throw new RangeError(
        `Cannot use ${flag} ${mask}: a node subnet needs room for pods (at most /${p.bits - 2})`,
      );
    }
  }
  return {
    podCidrs: pods.map(({ p }) => format(p.family, p.base, p.prefix)),
    clientCidrs: clients.map(({ p }) => format(p.family, p.base, p.prefix)),
    nodeMaskV4: input.nodeMaskV4,
    nodeMaskV6: input.nodeMaskV6,
  };
}

interface Slot {
  readonly key: string;
  readonly kind: "pod" | "client";
  readonly cidr: string;
  readonly pool: ParsedCidr;
  /** Prefix length of what is handed out. */
  readonly itemPrefix: number;
  /** First and last index handed out (clients skip the network and broadcast addresses). */
  readonly first: bigint;
  readonly last: bigint;
}

class InterimPools implements ClusterPools {
  readonly #db: DatabaseSync;
  readonly #pods: Slot[];
  readonly #clients: Slot[];
  readonly #stmts = new Map<string, StatementSync>();

  constructor(db: DatabaseSync, config: PoolConfig) {
    this.#db = db;
    db.exec(
      "CREATE TABLE IF NOT EXISTS cluster_pool_items (pool TEXT NOT NULL, idx TEXT NOT NULL, PRIMARY KEY (pool, idx)) STRICT",
    );
    db.exec(
      "CREATE TABLE IF NOT EXISTS cluster_pool_cursor (pool TEXT PRIMARY KEY, next TEXT NOT NULL) STRICT",
    );
    this.#pods = config.podCidrs.map((cidr) => {
      const pool = parse(cidr);
      const itemPrefix = pool.family === 4 ? config.nodeMaskV4 : config.nodeMaskV6;
      const count = 1n << BigInt(itemPrefix - pool.prefix);
      return {
        key: `pod:${cidr}`,
        kind: "pod",
        cidr,
        pool,
        itemPrefix,
        first: 0n,
        last: count - 1n,
      };
    });
    this.#clients = config.clientCidrs.map((cidr) => {
      const pool = parse(cidr);
      const count = 1n << BigInt(pool.bits - pool.prefix);
      const last = pool.family === 4 && count > 2n ? count - 2n : count - 1n;
      return {
        key: `client:${cidr}`,
        kind: "client",
        cidr,
        pool,
        itemPrefix: pool.bits,
        first: count > 2n ? 1n : 0n,
        last,
      };
    });
  }

  #stmt(sql: string): StatementSync {
    let s = this.#stmts.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql);
      this.#stmts.set(sql, s);
    }
    return s;
  }

  #allocate(slot: Slot): string {
    const size = slot.last - slot.first + 1n;
    const used = BigInt(this.#count(slot));
    if (used >= size) {
      throw new PoolExhaustedError(`Cannot allocate from ${slot.cidr}: the pool is exhausted`);
    }
    const cur = this.#stmt("SELECT next FROM cluster_pool_cursor WHERE pool = ?").get(slot.key) as
      | { next: string }
      | undefined;
    let idx = cur === undefined ? slot.first : BigInt(cur.next);
    const has = this.#stmt("SELECT 1 AS x FROM cluster_pool_items WHERE pool = ? AND idx = ?");
    for (let i = 0n; i < size; i++) {
      if (idx > slot.last) idx = slot.first;
      if (has.get(slot.key, idx.toString()) === undefined) break;
      idx++;
    }
    this.#stmt("INSERT INTO cluster_pool_items (pool, idx) VALUES (?, ?)").run(
      slot.key,
      idx.toString(),
    );
    this.#stmt(
      "INSERT INTO cluster_pool_cursor (pool, next) VALUES (?, ?) ON CONFLICT (pool) DO UPDATE SET next = excluded.next",
    ).run(slot.key, (idx + 1n).toString());
    const shift = BigInt(slot.pool.bits - slot.itemPrefix);
    return format(slot.pool.family, slot.pool.base + (idx << shift), slot.itemPrefix);
  }

  #release(slots: Slot[], cidr: string): void {
    const p = parse(cidr);
    const slot = slots.find((s) => s.pool.family === p.family && overlaps(s.pool, p));
    if (slot === undefined) return;
    const idx = (p.base - slot.pool.base) >> BigInt(slot.pool.bits - slot.itemPrefix);
    this.#stmt("DELETE FROM cluster_pool_items WHERE pool = ? AND idx = ?").run(
      slot.key,
      idx.toString(),
    );
  }

  #count(slot: Slot): number {
    return (this.#stmt("SELECT count(*) AS n FROM cluster_pool_items WHERE pool = ?").get(
      slot.key,
    ) as {
      n: number;
    }).n;
  }

  podFamilies(): readonly (4 | 6)[] {
    return this.#pods.map((s) => s.pool.family);
  }
  clientFamilies(): readonly (4 | 6)[] {
    return this.#clients.map((s) => s.pool.family);
  }
  podPool(family: 4 | 6): string {
    return this.#pods.find((s) => s.pool.family === family)?.cidr ?? "";
  }
  allocateSubnet(family: 4 | 6): string {
    const slot = this.#pods.find((s) => s.pool.family === family);
    if (slot === undefined) throw new RangeError(`No IPv${family} pod pool`);
    return this.#allocate(slot);
  }
  releaseSubnet(subnet: string): void {
    this.#release(this.#pods, subnet);
  }
  allocateClient(family: 4 | 6): string {
    const slot = this.#clients.find((s) => s.pool.family === family);
    if (slot === undefined) throw new RangeError(`No IPv${family} client pool`);
    return this.#allocate(slot);
  }
  releaseClient(address: string): void {
    this.#release(this.#clients, address);
  }
  poolContaining(address: string): string | undefined {
    return [...this.#pods, ...this.#clients].find((s) => contains(s.pool, address))?.cidr;
  }
  usage(): readonly PoolUsage[] {
    return [...this.#pods, ...this.#clients].map((s) => ({
      pool: s.kind,
      family: s.pool.family,
      cidr: s.cidr,
      used: this.#count(s),
      total: Number(s.last - s.first + 1n),
    }));
  }
}

/** The pools of `config` in `db` (call inside a transaction on first use). */
export function openClusterPools(db: DatabaseSync, config: PoolConfig): ClusterPools {
  return new InterimPools(db, config);
}
