/**
 * Pod address reservations on the node's subnets: one address per family
 * per attachment, kept in the node's state database (lib/ipam over SQLite),
 * so they survive a restart of the node manager.
 */
import type { DatabaseSync } from "node:sqlite";
import { AddressAllocator, parseCidr } from "../../lib/ipam/mod.ts";
import { SqliteIpamStore } from "../../lib/store/sqlite_ipam.ts";
import type { PodAddresses } from "./pods.ts";

/**
 * One allocator per subnet (network, gateway and IPv4 broadcast reserved).
 * A subnet change (a new registration) starts new pools; reservations of
 * a previous subnet are released by reconciliation when their pods go.
 */
export function openPodAddresses(db: DatabaseSync, subnets: readonly string[]): PodAddresses {
  const allocators = subnets.map((s) => {
    const cidr = parseCidr(s);
    return new AddressAllocator(cidr, new SqliteIpamStore(db, `pods:${s}`), {
      reserveNetwork: true,
      reserveGateway: true,
      reserveBroadcast: cidr.family === 4,
    });
  });
  return {
    subnets,
    claim(owner, addresses) {
      for (const address of addresses) {
        const a = allocators.find((x) => x.covers(address));
        if (a === undefined) {
          throw new RangeError(`Cannot claim ${address}: it is in none of ${subnets.join(", ")}`);
        }
        a.claim(owner, address);
      }
    },
    allocate(owner) {
      return allocators.map((a) => a.allocate(owner));
    },
    release(owner) {
      for (const a of allocators) a.release(owner);
    },
    get(owner) {
      const got = allocators.map((a) => a.get(owner));
      return got.every((g) => g !== undefined) ? got as string[] : undefined;
    },
    owners() {
      return [...new Set(allocators.flatMap((a) => a.list().map((e) => e.owner)))];
    },
    usage() {
      return allocators.map((a, i) => ({
        subnet: subnets[i]!,
        family: parseCidr(subnets[i]!).family,
        used: a.list().length,
        free: a.free(),
      }));
    },
    free() {
      return allocators.reduce<bigint>(
        (min, a) => (a.free() < min ? a.free() : min),
        allocators[0]?.free() ?? 0n,
      );
    },
  };
}
