/**
 * What watch streams that never read cost the cluster manager: 2,000 of
 * them (each a TCP connection that sends its request and reads nothing).
 * Measured on a real `wgcni cluster serve` process, each time after it was
 * quiet long enough for the runtime to collect garbage: the JavaScript heap
 * its live objects use and its resident size, before, with the streams open,
 * and after they close; and the time for 200 endpoint changes with them open,
 * against the same changes with 2,000 streams that do read (the fan-out
 * itself costs one write per stream and change either way).
 *
 *   deno run -A bench/watch_memory.ts
 */
import { join } from "node:path";
import { ClusterClient } from "../lib/api/cluster_client.ts";
import { type BenchRow, printRows } from "./_report.ts";
import { readTokens, startBenchServer } from "../tests/unit/_cluster_process.ts";

const STREAMS = 2000;
const CHANGES = 200;

const randomKey = () => btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));

/** The value of one metric of the manager. */
async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(text.match(new RegExp(`^${name} (\\S+)`, "m"))?.[1] ?? NaN);
}

/** A process holding `STREAMS` watch streams; they read everything when `read` is set. */
function holder(url: string, token: string, read: boolean): Deno.ChildProcess {
  const { hostname, port } = new URL(url);
  const code = `
    const req = new TextEncoder().encode("GET /v1/watch HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer ${token}\\r\\n\\r\\n");
    const buf = new Uint8Array(65536);
    for (let i = 0; i < ${STREAMS}; i++) {
      const c = await Deno.connect({ hostname: "${hostname}", port: ${port} });
      await c.write(req);
      if (${read}) (async () => { try { while ((await c.read(buf)) !== null); } catch {} })();
    }
    setInterval(() => {}, 1e6);`;
  return new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "null" }).spawn();
}

async function waitWatchers(url: string, n: number): Promise<void> {
  while ((await metric(url, "wgcni_cluster_watchers")) !== n) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function run(): Promise<BenchRow[]> {
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-bench-watchmem-" });
  try {
    await using server = await startBenchServer(join(dir, "data"), { fds: STREAMS * 2 + 1024 });
    const tokens = readTokens(join(dir, "data"));
    const joiner = new ClusterClient(server.url, { token: tokens.join });
    const nodes: { api: ClusterClient; name: string; key: string }[] = [];
    for (let i = 0; i < 20; i++) {
      const key = randomKey();
      const r = await joiner.register({
        name: `n${i}`,
        publicKey: key,
        endpoint: `192.0.2.${i + 1}:51820`,
      });
      nodes.push({
        api: new ClusterClient(server.url, { token: r.credential }),
        name: r.node.name,
        key,
      });
    }
    let round = 0;
    const changes = async () => {
      round++;
      const t0 = performance.now();
      for (let i = 0; i < CHANGES; i++) {
        const n = nodes[i % nodes.length]!;
        await n.api.register({
          name: n.name,
          publicKey: n.key,
          endpoint: `192.0.2.${(i % 250) + 1}:${20000 + round}`,
        });
      }
      return performance.now() - t0;
    };
    // The runtime collects garbage in earnest once the process has been quiet
    // for several seconds: measured heaps are of live objects then.
    // (up to 30 s; it is over when the heap has shrunk and holds still).
    const quiet = async () => {
      const first = await heap();
      let last = first;
      for (let i = 0; i < 30; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        const now = await heap();
        if (now < first * 0.8 && Math.abs(now - last) < last * 0.05) return;
        last = now;
      }
    };
    const heap = () => metric(server.url, "wgcni_cluster_heap_used_bytes").then((b) => b / 2 ** 20);
    const rss = () => metric(server.url, "process_resident_memory_bytes").then((b) => b / 2 ** 20);

    await quiet();
    const heapBefore = await heap();
    const rssBefore = await rss();
    const stalled = holder(server.url, tokens.admin, false);
    await waitWatchers(server.url, STREAMS);
    const withStalled = await changes();
    await quiet();
    const heapWith = await heap();
    const rssWith = await rss();
    stalled.kill("SIGKILL");
    await stalled.status;
    await waitWatchers(server.url, 0);
    await quiet();
    const heapAfter = await heap();
    // The reference for the time: the same changes fanned out to streams that read.
    const reading = holder(server.url, tokens.admin, true);
    await waitWatchers(server.url, STREAMS);
    const withReaders = await changes();
    reading.kill("SIGKILL");
    await reading.status;
    for (const n of nodes) n.api.close();
    joiner.close();
    const before = { reference: "the same server before they opened", referenceValue: heapBefore };
    return [
      {
        bench: "watch memory",
        name: `JS heap in use with ${STREAMS} watch streams that never read`,
        value: heapWith,
        unit: "MiB",
        ...before,
        note: `${((heapWith - heapBefore) * 1024 / STREAMS).toFixed(1)} KiB a stream`,
      },
      {
        bench: "watch memory",
        name: "JS heap in use after they closed",
        value: heapAfter,
        unit: "MiB",
        ...before,
      },
      {
        bench: "watch memory",
        name: `resident size with ${STREAMS} streams that never read`,
        value: rssWith,
        unit: "MiB",
        reference: "before they opened",
        referenceValue: rssBefore,
        note: "includes heap the runtime keeps free for reuse",
      },
      {
        bench: "watch memory",
        name: `${CHANGES} endpoint changes with ${STREAMS} streams that never read`,
        value: withStalled,
        unit: "ms",
        reference: `the same with ${STREAMS} streams that read`,
        referenceValue: withReaders,
        note: "aim ≤ 1.5×: stalled streams cost no more than live ones",
      },
    ];
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

if (import.meta.main) printRows(await run());
