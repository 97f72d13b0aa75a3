/**
 * Peer apply on a node: one delta (a peer added) with 1, 1,000 and 5,000
 * peers present, from the delta's arrival to `wg show` listing it, also
 * with a refused entry standing among 5,000; and a full resync of 5,000
 * peers. A real wireguard-go interface in a network namespace (root); the
 * node's Mesh and WireGuardControl as in production.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable } from "./_report.ts";
import { SystemRunner } from "../lib/ip/runner.ts";
import { generateKeyPair, WireGuardControl } from "../lib/wireguard/mod.ts";
import { Mesh } from "../modes/node/mesh.ts";
import { getLogger } from "../lib/log.ts";
import type { PeerEntry } from "../lib/api/cluster_types.ts";

const runner = new SystemRunner();
/** The aim for one delta at 5,000 peers. */
const AIM_DELTA_MS = 2;

function aimNote(ms: number): string {
  return `aim ≤ ${AIM_DELTA_MS} ms: ${ms <= AIM_DELTA_MS ? "met" : "NOT met"}`;
}

function peer(i: number, key: string): PeerEntry {
  const a = i >> 8, b = i & 255;
  return {
    kind: "node",
    name: `n${i}`,
    publicKey: key,
    endpoint: `192.0.2.${(i % 250) + 1}:51820`,
    allowedIps: [`10.${100 + (a >> 8)}.${a & 255}.${b}/32`, `fd00:30::${i.toString(16)}/128`],
  };
}

export async function run(): Promise<BenchRow[]> {
  if (Deno.uid() !== 0) {
    return [{ bench: "peers", name: "skipped", value: NaN, unit: "", note: "needs root" }];
  }
  const id = (Deno.pid % 100000).toString(36);
  const netns = `wgbp${id}`;
  const iface = `wgbp${id}`;
  await runner.run(["ip", "netns", "add", netns]);
  const rows: BenchRow[] = [];
  try {
    const wg = new WireGuardControl(runner);
    await wg.create(iface, { netns });
    const self = await generateKeyPair();
    await wg.configure(iface, { privateKey: self.privateKey, listenPort: 51820 }, { netns });
    const keys: string[] = [];
    for (let i = 0; i < 5007; i++) keys.push((await generateKeyPair()).publicKey);
    // The backend create() chose, as the node manager keeps it: on
    // wireguard-go, deltas go over its control socket; on the kernel, to `wg`.
    const backend = wg.backend!;
    const nsWg = new WireGuardControl({
      run: (argv, o = {}) => runner.run(argv, { ...o, netns }),
      exec: (argv, o = {}) => runner.exec(argv, { ...o, netns }),
    }, { backend });
    const how = backend === "userspace" ? "one control-socket request" : "one `wg set`";
    const mesh = new Mesh({
      wg: nsWg,
      iface,
      self: { name: "self", publicKey: self.publicKey, subnets: ["10.244.0.0/24"] },
      logger: getLogger("bench"),
      podKeys: () => new Set(),
    });
    let rev = 1;
    const showHas = async (key: string) =>
      (await runner.run(["wg", "show", iface, "peers"], { netns })).includes(key);
    /** Three deltas (each added, timed, then deleted), keys from `base`: apply and seen times. */
    const deltas = async (base: number) => {
      const samples: number[] = [];
      const applies: number[] = [];
      for (let k = 0; k < 3; k++) {
        const p = peer(base + k, keys[base + k] as string);
        const before = mesh.applied;
        const s0 = performance.now();
        await mesh.apply({ type: "upsert", revision: rev++, peer: p });
        applies.push(performance.now() - s0);
        if (mesh.applied !== before + 1) throw new Error("a delta took more than one operation");
        if (!(await showHas(p.publicKey))) throw new Error("delta not applied");
        samples.push(performance.now() - s0);
        await mesh.apply({
          type: "delete",
          revision: rev++,
          kind: "node",
          name: p.name,
          publicKey: p.publicKey,
        });
      }
      samples.sort((a, b) => a - b);
      applies.sort((a, b) => a - b);
      return { applies, samples };
    };
    for (const present of [1, 1000, 5000]) {
      const peers = Array.from({ length: present }, (_, i) => peer(i, keys[i] as string));
      const t0 = performance.now();
      await mesh.apply({ type: "snapshot", revision: rev++, peers });
      const resync = performance.now() - t0;
      if (present === 5000) {
        rows.push({
          bench: "peers",
          name: "full resync of 5,000 peers (from the previous 1,000)",
          value: resync,
          unit: "ms",
          note: "aim ≤ 1500 ms",
        });
      }
      const { applies, samples } = await deltas(5000);
      rows.push({
        bench: "peers",
        name: `one delta applied (${how} answered), ${present} peers present (median of 3)`,
        value: applies[1] as number,
        unit: "ms",
        note: aimNote(applies[1] as number),
      });
      rows.push({
        bench: "peers",
        name: `one delta applied and seen in \`wg show\`, ${present} peers present (median of 3)`,
        value: samples[1] as number,
        unit: "ms",
        note: "adds one `wg show`, which lists every peer (its cost grows with the peer count)",
      });
    }
    // An entry claiming n0's addresses under a later name: refused (no
    // operation), and it stays refused while other peers come and go.
    const dup = { ...peer(0, keys[5003] as string), name: "zz-dup" };
    const before = mesh.applied;
    await mesh.apply({ type: "upsert", revision: rev++, peer: dup });
    if (mesh.applied !== before || mesh.refused.length !== 1) throw new Error("not refused");
    const { applies } = await deltas(5004);
    rows.push({
      bench: "peers",
      name: "one delta applied, 5000 peers and a refused entry present (median of 3)",
      value: applies[1] as number,
      unit: "ms",
      note: aimNote(applies[1] as number),
    });
    const empty = await new Mesh({
      wg: nsWg,
      iface,
      self: { name: "self", publicKey: self.publicKey, subnets: ["10.244.0.0/24"] },
      logger: getLogger("bench"),
      podKeys: () => new Set(),
    });
    await empty.apply({ type: "snapshot", revision: 1, peers: [] });
    const all = Array.from({ length: 5000 }, (_, i) => peer(i, keys[i] as string));
    const t0 = performance.now();
    await empty.apply({ type: "snapshot", revision: 2, peers: all });
    rows.push({
      bench: "peers",
      name: "full resync of 5,000 peers onto an empty interface",
      value: performance.now() - t0,
      unit: "ms",
      note: "aim ≤ 1500 ms",
    });
  } finally {
    await runner.exec(["ip", "link", "del", iface], { netns });
    await runner.exec(["ip", "netns", "del", netns]);
  }
  return rows;
}

if (import.meta.main) {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(await run()) + "\n"));
}
