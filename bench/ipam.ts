/**
 * IPAM throughput: allocations and releases per second in one /16 and one
 * /64, in memory and durable (SQLite, one transaction per operation as the
 * node manager does), against a bare Set<bigint> insertion (the floor).
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable } from "./_report.ts";
import { AddressAllocator, type IpamStore, MemoryIpamStore } from "../lib/ipam/mod.ts";
import { openDatabase, SqliteIpamStore } from "../lib/store/sqlite_ipam.ts";
import { inTx } from "../tests/unit/_sqlite.ts";

const N_MEMORY = 50_000;
const N_DURABLE = 3_000;

function measure(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return (performance.now() - t0) / 1000;
}

function floor(n: number): number {
  const s = new Set<bigint>();
  const secs = measure(() => {
    for (let i = 0; i < n; i++) s.add(BigInt(i) + 0x0af40000n);
  });
  return n / secs;
}

function run1(
  label: string,
  cidr: string,
  n: number,
  store: IpamStore,
  tx: <T>(fn: () => T) => T,
): BenchRow[] {
  const a = new AddressAllocator(cidr, store);
  const allocSecs = measure(() => {
    for (let i = 0; i < n; i++) tx(() => a.allocate(`c${i}/eth0`));
  });
  const releaseSecs = measure(() => {
    for (let i = 0; i < n; i++) tx(() => a.release(`c${i}/eth0`));
  });
  const reuseSecs = measure(() => {
    for (let i = 0; i < n; i++) tx(() => a.allocate(`d${i}/eth0`));
  });
  const ref = floor(n);
  return [
    {
      bench: "ipam",
      name: `allocate, ${label} ${cidr}`,
      value: n / allocSecs,
      unit: "ops/s",
      reference: "Set<bigint>.add",
      referenceValue: ref,
    },
    {
      bench: "ipam",
      name: `release, ${label} ${cidr}`,
      value: n / releaseSecs,
      unit: "ops/s",
      reference: "Set<bigint>.add",
      referenceValue: ref,
    },
    {
      bench: "ipam",
      name: `allocate after release (reuse), ${label} ${cidr}`,
      value: n / reuseSecs,
      unit: "ops/s",
      reference: "Set<bigint>.add",
      referenceValue: ref,
    },
  ];
}

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const direct = <T>(fn: () => T) => fn();
  for (const cidr of ["10.244.0.0/16", "fd00:10:244::/64"]) {
    rows.push(...run1("memory", cidr, N_MEMORY, new MemoryIpamStore(), direct));
  }
  const dir = await Deno.makeTempDir({ prefix: "wgcni-bench-ipam-" });
  try {
    for (const [i, cidr] of ["10.244.0.0/16", "fd00:10:244::/64"].entries()) {
      const db = openDatabase(`${dir}/ipam${i}.db`);
      const tx = <T>(fn: () => T): T => inTx(db, fn);
      rows.push(...run1("durable SQLite", cidr, N_DURABLE, new SqliteIpamStore(db, "bench"), tx));
      db.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return rows;
}

if (import.meta.main) {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(await run()) + "\n"));
}
