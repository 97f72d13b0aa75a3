/**
 * Allocators: {@linkcode IndexAllocator} hands out indices of a range to
 * owners; {@linkcode AddressAllocator} (addresses of one subnet) and
 * {@linkcode SubnetPool} (subnets carved from a pool) are views on it.
 *
 * Idempotent per owner; fresh indices first, in order; then released ones,
 * longest idle first; reserved indices never; {@linkcode PoolExhaustedError}
 * when nothing is left. O(1) amortised; sparse, so a /64 works.
 */
import { ConflictError, PoolExhaustedError } from "../errors.ts";
import {
  bitsOf,
  type Cidr,
  cidrSize,
  contains,
  formatAddress,
  formatCidr,
  parseAddress,
  parseCidr,
} from "./cidr.ts";
import type { IpamStore } from "./store.ts";

export class IndexAllocator {
  readonly size: bigint;
  readonly #store: IpamStore;
  readonly #reserved: ReadonlySet<bigint>;
  readonly #label: string;

  constructor(
    size: bigint,
    store: IpamStore,
    options: { reserved?: Iterable<bigint>; label: string },
  ) {
    this.size = size;
    this.#store = store;
    this.#reserved = new Set([...(options.reserved ?? [])].filter((i) => i >= 0n && i < size));
    this.#label = options.label;
  }

  /** The owner's index, allocating one if it has none. */
  allocate(owner: string): bigint {
    const mine = this.#store.indexOf(owner);
    if (mine !== undefined) return mine;
    let c = this.#store.cursor();
    while (c < this.size) {
      const i = c++;
      if (this.#reserved.has(i) || this.#store.ownerAt(i) !== undefined) continue;
      this.#store.bind(owner, i);
      this.#store.setCursor(c);
      return i;
    }
    this.#store.setCursor(c);
    for (let i = this.#store.popReleased(); i !== undefined; i = this.#store.popReleased()) {
      if (this.#reserved.has(i) || i >= this.size || this.#store.ownerAt(i) !== undefined) continue;
      this.#store.bind(owner, i);
      return i;
    }
    throw new PoolExhaustedError(`Cannot allocate from ${this.#label}: pool is exhausted`);
  }

  /**
   * Binds exactly `index` to `owner` (a reservation rebuilt from elsewhere);
   * a no-op when it holds it already. A reserved index or one beyond the
   * range is a RangeError; one held by another owner, or another index held
   * by this owner, a {@linkcode ConflictError}.
   */
  claim(owner: string, index: bigint): void {
    if (index < 0n || index >= this.size || this.#reserved.has(index)) {
      throw new RangeError(
        `Cannot claim index ${index} of ${this.#label}: it is reserved or outside`,
      );
    }
    const holder = this.#store.ownerAt(index);
    if (holder === owner) return;
    if (holder !== undefined) {
      throw new ConflictError(`Cannot claim index ${index} of ${this.#label}: ${holder} holds it`);
    }
    const mine = this.#store.indexOf(owner);
    if (mine !== undefined) {
      throw new ConflictError(
        `Cannot claim index ${index} of ${this.#label} for ${owner}: it holds ${mine}`,
      );
    }
    this.#store.bind(owner, index);
  }

  /** Releases the owner's index; false when it had none. */
  release(owner: string): boolean {
    const i = this.#store.unbind(owner);
    if (i === undefined) return false;
    this.#store.pushReleased(i);
    return true;
  }

  get(owner: string): bigint | undefined {
    return this.#store.indexOf(owner);
  }

  ownerAt(index: bigint): string | undefined {
    return this.#store.ownerAt(index);
  }

  list(): { owner: string; index: bigint }[] {
    return this.#store.list();
  }

  used(): bigint {
    return BigInt(this.#store.count());
  }

  free(): bigint {
    return this.size - BigInt(this.#reserved.size) - this.used();
  }
}

export interface AddressAllocatorOptions {
  /** Reserve the network address (index 0). Default true. */
  readonly reserveNetwork?: boolean;
  /** Reserve the first host (the gateway). Default true. */
  readonly reserveGateway?: boolean;
  /** Reserve the last address (IPv4 broadcast). Default true for IPv4. */
  readonly reserveBroadcast?: boolean;
}

/**
 * What {@linkcode AddressAllocator} and {@linkcode SubnetPool} share: an
 * {@linkcode IndexAllocator} whose indices they show as text.
 */
abstract class IndexView {
  protected readonly idx: IndexAllocator;

  constructor(idx: IndexAllocator) {
    this.idx = idx;
  }

  /** The text of index `i`. */
  protected abstract format(i: bigint): string;

  /** The owner's element (an address without prefix, a subnet), allocating one if needed. */
  allocate(owner: string): string {
    return this.format(this.idx.allocate(owner));
  }

  release(owner: string): boolean {
    return this.idx.release(owner);
  }

  get(owner: string): string | undefined {
    const i = this.idx.get(owner);
    return i === undefined ? undefined : this.format(i);
  }

  free(): bigint {
    return this.idx.free();
  }

  used(): bigint {
    return this.idx.used();
  }
}

/** Single addresses of one subnet. */
export class AddressAllocator extends IndexView {
  readonly cidr: Cidr;

  constructor(cidr: Cidr | string, store: IpamStore, options: AddressAllocatorOptions = {}) {
    const c = typeof cidr === "string" ? parseCidr(cidr) : cidr;
    const size = cidrSize(c);
    const reserved: bigint[] = [];
    if (options.reserveNetwork ?? true) reserved.push(0n);
    if ((options.reserveGateway ?? true) && size > 2n) reserved.push(1n);
    if ((options.reserveBroadcast ?? c.family === 4) && size > 2n) reserved.push(size - 1n);
    super(new IndexAllocator(size, store, { reserved, label: formatCidr(c) }));
    this.cidr = c;
  }

  /** Binds exactly `address` to `owner` (see {@linkcode IndexAllocator.claim}). */
  claim(owner: string, address: string): void {
    const a = parseAddress(address);
    if (!contains(this.cidr, a)) {
      throw new RangeError(`Cannot claim ${address}: it is outside ${formatCidr(this.cidr)}`);
    }
    this.idx.claim(owner, a.value - this.cidr.base);
  }

  /** Whether `address` lies in this allocator's subnet. */
  covers(address: string): boolean {
    try {
      return contains(this.cidr, parseAddress(address));
    } catch {
      return false;
    }
  }

  /** Who holds `address`, if anyone. */
  ownerOf(address: string): string | undefined {
    const a = parseAddress(address);
    if (!contains(this.cidr, a)) return undefined;
    return this.idx.ownerAt(a.value - this.cidr.base);
  }

  list(): { owner: string; address: string }[] {
    return this.idx.list().map((e) => ({ owner: e.owner, address: this.format(e.index) }));
  }

  protected override format(i: bigint): string {
    return formatAddress(this.cidr.family, this.cidr.base + i);
  }
}

/** Subnets of one prefix length carved from a pool. */
export class SubnetPool extends IndexView {
  readonly pool: Cidr;
  readonly mask: number;
  readonly #shift: bigint;

  constructor(pool: Cidr | string, mask: number, store: IpamStore) {
    const p = typeof pool === "string" ? parseCidr(pool) : pool;
    const bits = bitsOf(p.family);
    if (!Number.isInteger(mask) || mask < p.prefix || mask > bits) {
      throw new RangeError(
        `Cannot carve /${mask} subnets from ${
          formatCidr(p)
        }: expected a prefix length from ${p.prefix} to ${bits}`,
      );
    }
    super(new IndexAllocator(1n << BigInt(mask - p.prefix), store, { label: formatCidr(p) }));
    this.pool = p;
    this.mask = mask;
    this.#shift = BigInt(bits - mask);
  }

  list(): { owner: string; subnet: string }[] {
    return this.idx.list().map((e) => ({ owner: e.owner, subnet: this.format(e.index) }));
  }

  protected override format(i: bigint): string {
    return formatCidr({
      family: this.pool.family,
      base: this.pool.base + (i << this.#shift),
      prefix: this.mask,
    });
  }
}
