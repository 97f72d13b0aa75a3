/**
 * Node IPAM through the local unix-socket API: pod address allocations and
 * releases per second at concurrency 1 and 100, durable.
 *
 * The node's local API has no address-only route: CNI ADD (the only verb
 * that allocates) also creates the pod's WireGuard interface, moves it into
 * the pod's namespace and peers it with the node, and /v1/allocations only
 * lists. So this measures the node's durable address store behind the real
 * local API app (`createLocalApp`, lib/api/local_app.ts: the same routes,
 * body cap and request validation the CNI plugin meets) served by
 * `Deno.serve` on a unix socket in a temp dir, in its own process, with
 * handlers that do only the database part of PodManager (modes/node/pods.ts):
 *
 * - ADD = one transaction: reserve an IPv4 and an IPv6 address for the
 *   attachment (openPodAddresses, modes/node/addresses.ts) and write its pod
 *   record (NodeStateStore), as PodManager's write-ahead step; the answer is
 *   the CNI result a pod would get;
 * - DEL = one transaction: release both addresses and delete the record, as
 *   PodManager's undo step.
 *
 * Not included: key generation, interface creation and every netlink or
 * WireGuard step, and the two later record updates of a real ADD. The
 * database is opened as the node opens it (openDatabase: WAL,
 * synchronous=FULL, one fsync per commit), once on a disk-backed temp dir and
 * once on tmpfs (where production keeps /run/wgcni). The load is one separate
 * process with 1 or 100 keep-alive connections, each cycling ADD then DEL of
 * its own attachments. The reference runs the same two transactions in one
 * process without HTTP or a socket. Run alone: `deno run -A bench/node_ipam.ts`.
 */
import type { BenchRow } from "./_report.ts";
import { markdownTable } from "./_report.ts";
import { join } from "node:path";
import type { DatabaseSync } from "node:sqlite";
import { createLocalApp, type ErrorMapper } from "../lib/api/local_app.ts";
import { type CniRequest, type CniResult, LOCAL_PATHS } from "../lib/api/local_types.ts";
import { CniError, ERR } from "../lib/cni/errors.ts";
import { PoolExhaustedError } from "../lib/errors.ts";
import { NodeStateStore } from "../lib/store/node_state.ts";
import { openDatabase } from "../lib/store/sqlite_ipam.ts";
import { openPodAddresses } from "../modes/node/addresses.ts";
import { ownerOf, podWgName } from "../modes/node/pods.ts";
import { hostCidrs } from "../modes/node/pod_plan.ts";
import { aimNote, driveLoad, httpRequest, JsonChild, loadWorker, now, onInterrupt } from "./api.ts";

/** A node's subnets as the cluster manager hands them out (one /24 and one /64). */
const SUBNETS = ["10.244.3.0/24", "fd00:10:244:3::/64"];
const CONCURRENCY = [1, 100];
const WARMUP_MS = 500;
const DURATION_MS = 3000;
const REFERENCE_MS = 2000;
const AIM = 2000;
const SELF = new URL(import.meta.url).pathname;
const encoder = new TextEncoder();
const NODE_INTERFACE = "wgcni0";
const PLACEHOLDER_KEY = btoa(String.fromCharCode(...new Uint8Array(32).fill(7)));

/** The database part of PodManager's ADD and DEL. */
function podTransactions(db: DatabaseSync) {
  const store = new NodeStateStore(db);
  const addresses = openPodAddresses(db, SUBNETS);
  return {
    addresses,
    async allocate(containerId: string, ifname: string, netns: string): Promise<string[]> {
      const owner = ownerOf(containerId, ifname);
      const wgName = await podWgName(NODE_INTERFACE, containerId, ifname);
      if (store.get(containerId, ifname)) {
        throw new CniError(ERR.internal, `Cannot add ${owner}: it is already attached`);
      }
      return store.transaction(() => {
        const addrs = addresses.allocate(owner);
        store.put({
          containerId,
          ifname,
          netns,
          phase: "adding",
          wgName,
          publicKey: PLACEHOLDER_KEY,
          addresses: addrs,
          listenPort: 0,
          createdAt: Date.now(),
        });
        return addrs;
      });
    },
    release(containerId: string, ifname: string): void {
      store.transaction(() => {
        addresses.release(ownerOf(containerId, ifname));
        store.delete(containerId, ifname);
      });
    },
  };
}

const mapError: ErrorMapper = (err) => {
  if (err instanceof CniError) {
    return {
      status: err.code >= 2 && err.code <= 7 ? 400 : 500,
      body: { code: err.code, msg: err.message },
    };
  }
  if (err instanceof PoolExhaustedError) {
    return { status: 503, body: { code: ERR.poolExhausted, msg: err.message } };
  }
  return { status: 500, body: { code: ERR.internal, msg: String(err) } };
};

/** The CNI 1.1.0 result of an attachment, as PodManager answers ADD. */
function result(req: CniRequest, addresses: readonly string[]): CniResult {
  const [v4, v6] = hostCidrs(addresses);
  return {
    cniVersion: String(req.config["cniVersion"] ?? "1.1.0"),
    interfaces: [{ name: req.ifname, mac: "00:00:00:00:00:00", mtu: 1420, sandbox: req.netns }],
    ips: [
      ...(v4 ? [{ address: v4, interface: 0 }] : []),
      ...(v6 ? [{ address: v6, interface: 0 }] : []),
    ],
    routes: [{ dst: "0.0.0.0/0" }, { dst: "::/0" }],
    dns: {},
  };
}

/** Server mode: the local API app with address-only handlers on `socket`. */
function serve(socket: string, dbPath: string): void {
  const db = openDatabase(dbPath);
  const tx = podTransactions(db);
  const unsupported = () =>
    Promise.reject(new CniError(ERR.internal, "not part of the IPAM benchmark"));
  const app = createLocalApp({
    add: async (req) => result(req, await tx.allocate(req.containerId, req.ifname, req.netns)),
    del: (req) => Promise.resolve(tx.release(req.containerId, req.ifname)),
    check: unsupported,
    status: () => Promise.resolve(undefined),
    gc: unsupported,
    node: () => Promise.resolve({ subnets: SUBNETS }),
    peers: () => Promise.resolve({ peers: [] }),
    allocations: () =>
      Promise.resolve({
        subnets: SUBNETS,
        free: tx.addresses.free().toString(),
        owners: tx.addresses.owners().length,
      }),
  }, mapError);
  Deno.addSignalListener("SIGTERM", () => {
    db.close();
    Deno.exit(0);
  });
  Deno.serve({
    path: socket,
    onListen: () => Deno.stdout.writeSync(encoder.encode(JSON.stringify({ ready: 1 }) + "\n")),
  }, app.fetch);
}

function cniBody(containerId: string): string {
  return JSON.stringify({
    containerId,
    ifname: "eth0",
    netns: `/var/run/netns/${containerId}`,
    args: {},
    config: { cniVersion: "1.1.0", name: "wgcni", type: "wgcni" },
  });
}

/** Load mode: `lanes` connections, each cycling ADD then DEL of its own attachments. */
async function load(spec: { socket: string; lanes: number; prefix: string }): Promise<void> {
  const headers = { "content-type": "application/json" };
  await loadWorker({
    target: { path: spec.socket },
    lanes: spec.lanes,
    warmupMs: WARMUP_MS,
    durationMs: DURATION_MS,
    step: async (http, lane, seq, record) => {
      const body = cniBody(`${spec.prefix}${lane.toString(36)}x${seq.toString(36)}`);
      let t0 = now();
      const add = await http.request(httpRequest("POST", LOCAL_PATHS.add, headers, body));
      record("allocate", t0, add);
      if (add.status !== 200) throw new Error(`ADD answered ${add.status}`);
      t0 = now();
      record(
        "release",
        t0,
        await http.request(httpRequest("POST", LOCAL_PATHS.del, headers, body)),
      );
    },
  });
}

/** Allocate + release operations per second of the same transactions in this process. */
async function inProcess(dbPath: string): Promise<number> {
  const db = openDatabase(dbPath);
  try {
    const tx = podTransactions(db);
    let ops = 0;
    const t0 = now();
    while (now() - t0 < REFERENCE_MS) {
      const id = `ref${ops.toString(36)}`;
      await tx.allocate(id, "eth0", `/var/run/netns/${id}`);
      tx.release(id, "eth0");
      ops += 2;
    }
    return ops / ((now() - t0) / 1000);
  } finally {
    db.close();
  }
}

/** The file system type under `dir` (findmnt, else stat). */
function fsType(dir: string): string {
  for (
    const [cmd, args] of [["findmnt", ["-n", "-o", "FSTYPE", "--target", dir]], [
      "stat",
      ["-f", "-c", "%T", dir],
    ]] as const
  ) {
    try {
      const out = new Deno.Command(cmd, { args: [...args] }).outputSync();
      const type = new TextDecoder().decode(out.stdout).trim().split("\n")[0];
      if (out.success && type) return type;
    } catch {
      // not installed: the next way
    }
  }
  return "?";
}

/** Temp dirs to put the database in: disk-backed, and tmpfs when the machine has one. */
function storages(): { label: string; dir: string; tmpfs: boolean }[] {
  const out: { label: string; dir: string; tmpfs: boolean }[] = [];
  const disk = Deno.makeTempDirSync({ prefix: "wgcni-bench-node-ipam-" });
  const type = fsType(disk);
  out.push({ label: `${type} temp dir`, dir: disk, tmpfs: type === "tmpfs" });
  try {
    if (fsType("/dev/shm") === "tmpfs") {
      const shm = Deno.makeTempDirSync({ dir: "/dev/shm", prefix: "wgcni-bench-node-ipam-" });
      out.push({ label: "tmpfs temp dir", dir: shm, tmpfs: true });
    }
  } catch {
    // no usable tmpfs: the disk figures only
  }
  return out;
}

const ms = (n: number) => n.toFixed(n < 10 ? 2 : 0);

/** Why a tmpfs row can miss the aim: CPU, per transaction and shared with the load. */
function cpuCause(referenceOps: number, serverCpuShare: number): string {
  return `CPU-bound: one durable SQLite transaction per operation takes ${
    Math.round(1e6 / referenceOps)
  } µs in-process on this machine, the HTTP exchange adds to it, and the load process shares the 2 cores with the server (at ${
    (serverCpuShare * 100).toFixed(0)
  }% of one core)`;
}

/** Why a disk-backed row can miss the aim; production keeps the store on tmpfs. */
const DISK_CAUSE =
  "every commit waits for an fsync of this disk (the in-process reference without HTTP is bound by it too); the node manager keeps this store in /run/wgcni, a tmpfs, as the tmpfs rows measure";

/** Runs the benchmark and returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const dirs = storages();
  const forgetDirs = onInterrupt(() => {
    for (const { dir } of dirs) Deno.removeSync(dir, { recursive: true });
  });
  try {
    for (const { label, dir, tmpfs } of dirs) {
      const socket = join(dir, "wgcni.sock");
      const server = new JsonChild([SELF, "--serve", socket, join(dir, "node.db")]);
      try {
        await server.next();
        const reference = await inProcess(join(dir, "reference.db"));
        const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
        try {
          for (const c of CONCURRENCY) {
            const out = await driveLoad(
              [[SELF, "--load", JSON.stringify({ socket, lanes: c, prefix: `c${c}-` })]],
              server.pid,
              DURATION_MS,
            );
            const a = out.labels["allocate"];
            const r = out.labels["release"];
            if (a === undefined || r === undefined || out.errors > 0 || a.non2xx || r.non2xx) {
              throw new Error(
                `node IPAM load failed: ${out.errors} errors, ${a?.non2xx} ADD and ${r?.non2xx} DEL not 200 ${out.firstError}`,
              );
            }
            // Every cycle finished with a release: nothing may stay reserved.
            const view = await (await fetch(`http://127.0.0.1${LOCAL_PATHS.allocations}`, {
              client,
            })).json() as { owners: number };
            if (view.owners !== 0) throw new Error(`${view.owners} reservations left behind`);
            const ops = a.perSecond + r.perSecond;
            rows.push({
              bench: "node_ipam",
              name:
                `allocate + release via the local API socket, concurrency ${c}, ${label} (synchronous=FULL)`,
              value: Math.round(ops),
              unit: "ops/s",
              reference: "same transactions in-process, no socket",
              referenceValue: Math.round(reference),
              note: `${aimNote(ops >= AIM, "≥ 2,000/s counting allocations + releases")}, ${
                aimNote(a.perSecond >= AIM, "counting allocations alone")
              } (${Math.round(a.perSecond)} allocations/s + ${
                Math.round(r.perSecond)
              } releases/s); ADD p50 ${ms(a.p50)} / p99 ${ms(a.p99)} ms, DEL p50 ${
                ms(r.p50)
              } / p99 ${ms(r.p99)} ms; server CPU ${(out.serverCpuShare * 100).toFixed(0)}%${
                a.perSecond >= AIM
                  ? ""
                  : `; ${tmpfs ? cpuCause(reference, out.serverCpuShare) : DISK_CAUSE}`
              }`,
            });
          }
        } finally {
          client.close();
        }
      } finally {
        await server.stop();
      }
    }
  } finally {
    for (const { dir } of dirs) Deno.removeSync(dir, { recursive: true });
    forgetDirs();
  }
  return rows;
}

if (import.meta.main) {
  const args = Deno.args;
  if (args[0] === "--serve") {
    serve(args[1]!, args[2]!);
  } else if (args[0] === "--load") {
    await load(JSON.parse(args[1]!));
    Deno.exit(0);
  } else {
    Deno.stdout.writeSync(encoder.encode(markdownTable(await run()) + "\n"));
  }
}
