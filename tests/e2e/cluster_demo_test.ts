/**
 * The three roles together as real processes: the demo as a newcomer runs
 * it, encryption on the wire, an external client, membership changes under
 * traffic, and a simulated reboot.
 */
import assert from "node:assert/strict";
import {
  allocations as pods,
  e2eTest,
  eventually,
  expectedBackend,
  labTest,
  ping,
  userspaceInterfacesLeft,
} from "../_helpers/e2e.ts";
import { type LabNodeState, type LabPod, nodePlaceFlags } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { startProcess } from "../../lib/ip/process.ts";
import { DIRECT_PORTS_SET, NFT_TABLE, setElements } from "../../lib/ip/nft.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { backendName } from "../../modes/demo/run.ts";

const runner = new SystemRunner();
const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

/** `wgcni ARGS` from the module cache only, its output piped. */
function wgcniCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--cached-only", "--config", CONFIG, MAIN, ...args],
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdout: "piped",
    stderr: "piped",
  });
}

async function wgcni(args: string[]) {
  const out = await wgcniCommand(args).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Asserts that nothing is left of the lab a demo's output names: no namespace, no node interface. */
async function assertDemoGone(output: string): Promise<void> {
  const id = output.match(/underlay wgd-(\w+)-ul/)?.[1];
  assert.ok(id);
  const left = await runner.run(["ip", "netns", "list"]);
  assert.ok(!left.includes(`wgd-${id}-`), `namespaces left: ${left}`);
  await eventually(
    "no node interface left",
    async () => (await userspaceInterfacesLeft(`wgd${id}`)).length === 0,
    5000,
  );
}

e2eTest(
  "wgcni demo builds a 3-node cluster, shows full reachability and leaves nothing behind",
  async () => {
    const r = await wgcni(["demo", "--nodes", "3", "--pods", "2"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const lines = r.stdout.split("\n");
    for (let i = 1; i <= 6; i++) {
      assert.ok(lines.some((l) => l.startsWith(`[${i}/6] `)), `step ${i}`);
    }
    assert.match(
      r.stdout,
      /^summary: 30\/30 pod pairs reachable over IPv4, 30\/30 over IPv6; 6 pods on 3 nodes; /m,
    );
    assert.equal((r.stdout.match(/^ {2}node\d-pod\d /gm) ?? []).length, 6);
    // Each node says which WireGuard it runs on.
    const backend = backendName(await expectedBackend());
    const nodeLines = r.stdout.match(/^ {2}node\d +192\.0\.2\.\d+ +.*$/gm) ?? [];
    assert.equal(nodeLines.length, 3, r.stdout);
    for (const l of nodeLines) assert.ok(l.endsWith(`  ${backend}`), l);
    assert.doesNotMatch(r.stdout, /^ {2}n\dp\d .*(FAIL|v4|v6)/m, "a matrix cell is not ok");
    await assertDemoGone(r.stdout);
  },
);

e2eTest("an interrupted wgcni demo (Ctrl-C) cleans up", async () => {
  const child = wgcniCommand(["demo", "--nodes", "2", "--pods", "2"]).spawn();
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  while (!out.includes("[3/6]")) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const status = await child.status;
  await child.stderr.cancel();
  assert.equal(status.code, 130, out);
  assert.match(out, /interrupted, cleaning up/);
  await assertDemoGone(out);
}, { neutral: true });

e2eTest("wgcni demo --keep leaves the cluster up and --down removes it", async () => {
  const dir = await Deno.makeTempDir();
  const state = `${dir}/state.json`;
  try {
    const up = await wgcni([
      "demo",
      "--nodes",
      "2",
      "--pods",
      "1",
      "--keep",
      "--state-file",
      state,
    ]);
    assert.equal(up.code, 0, up.stdout + up.stderr);
    assert.match(up.stdout, /remove it with: wgcni demo --down/);
    const kept = JSON.parse(await Deno.readTextFile(state)) as {
      id: string;
      nodes: { socket: string }[];
    };
    const c = createLocalClient(kept.nodes[0]?.socket as string);
    assert.equal(((await c.node()) as { name: string }).name, "node1");
    c.close();
    const again = await wgcni(["demo", "--state-file", state]);
    assert.equal(again.code, 1);
    assert.match(again.stdout, /still running/);
    const down = await wgcni(["demo", "--down", "--state-file", state]);
    assert.equal(down.code, 0, down.stdout);
    assert.match(down.stdout, /removed demo cluster/);
    assert.ok(!(await runner.run(["ip", "netns", "list"])).includes(`wgd-${kept.id}-`));
    assert.equal(
      (await wgcni(["demo", "--down", "--state-file", state])).stdout.trim(),
      "wgcni demo: no demo cluster is running",
    );
  } finally {
    await wgcni(["demo", "--down", "--state-file", state]);
    await Deno.remove(dir, { recursive: true });
  }
}, { neutral: true });

labTest(
  "a cluster of real processes: encryption, external clients, churn under traffic, reboot",
  async (lab, t) => {
    await lab.startCluster();
    const [a, b] = await Promise.all([lab.addNode(1), lab.addNode(2)]);
    const pa = await lab.addPod(a as LabNodeState, 1);
    const pb = await lab.addPod(b as LabNodeState, 1);

    await t.step(
      "pod to pod across nodes crosses the underlay only as WireGuard UDP",
      async () => {
        const file = `${lab.state.dir}/underlay.pcap`;
        const capLog = `${lab.state.dir}/tcpdump.log`;
        const cap = await startProcess(
          [
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "--immediate-mode",
            "-U",
            "-w",
            file,
            "not",
            "tcp",
            "port",
            "7443",
          ],
          { netns: lab.underlay, logFile: capLog },
        );
        // tcpdump says so once its capture is open; traffic before that is not
        // seen. Immediate mode hands each packet over at once, not when a
        // buffer block times out (which may be after the SIGINT below).
        await eventually(
          "tcpdump to listen",
          async () => (await Deno.readTextFile(capLog).catch(() => "")).includes("listening on"),
        );
        for (const addr of pb.addresses) assert.ok(await ping(pa.netns, addr), `a → ${addr}`);
        await runner.run([
          "ping",
          "-n",
          "-q",
          "-c",
          "5",
          "-i",
          "0.05",
          "-s",
          "400",
          pb.addresses[0] as string,
        ], {
          netns: pa.netns,
        });
        await new Promise((r) => setTimeout(r, 300));
        cap.kill("SIGINT");
        await cap.exited;
        const text = await runner.run(["tcpdump", "-n", "-r", file]);
        const ip = text.split("\n").filter((l) =>
          / IP6? /.test(l) && !/ICMP6, (multicast|neighbor|router)| igmp /.test(l)
        );
        assert.ok(ip.length >= 10, `captured ${ip.length} packets`);
        // WireGuard's sockets: the nodes' (51820) and the pods' direct ones.
        const ports = new Set([51820]);
        for (const n of lab.state.nodes) {
          const r = await runner.exec(
            ["nft", "-j", "list", "set", "inet", NFT_TABLE, DIRECT_PORTS_SET],
            { netns: n.netns },
          );
          if (r.code === 0) { for (const p of setElements(r.stdout)) ports.add(Number(p)); }
        }
        for (const l of ip) {
          const port = [...ports].some((p) => new RegExp(`\\.${p}[ :]`).test(l));
          assert.ok(port && / UDP/.test(l), `not WireGuard: ${l}`);
          assert.doesNotMatch(l, /10\.244\.|fd00:10:244/, `pod address in clear: ${l}`);
        }
      },
    );

    await t.step(
      "an external client reaches pods on every node; removing it cuts it off",
      async () => {
        const laptop = await lab.addHost("laptop", 1);
        const conf = `${lab.state.dir}/wgl${lab.state.id}.conf`;
        const add = await lab.cli(
          ["client", "add", "laptop", ...lab.adminFlags, "-o", conf],
          laptop.netns,
        );
        assert.equal(add.code, 0, add.stderr);
        assert.equal((await Deno.stat(conf)).mode! & 0o777, 0o600);
        const text = await Deno.readTextFile(conf);
        assert.equal((text.match(/PrivateKey/g) ?? []).length, 1);
        const up = await runner.exec(["wg-quick", "up", conf], {
          netns: laptop.netns,
          env: {
            WG_QUICK_USERSPACE_IMPLEMENTATION: "wireguard-go",
            WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: "1",
          },
        });
        assert.equal(up.code, 0, up.stderr);
        try {
          // Everything the laptop is sent over the mesh: no redirect among it.
          const capLog = `${lab.state.dir}/laptop-icmp.log`;
          const cap = await startProcess(
            [
              "tcpdump",
              "-l",
              "-n",
              "-i",
              `wgl${lab.state.id}`,
              "--immediate-mode",
              "icmp or icmp6",
            ],
            { netns: laptop.netns, logFile: capLog },
          );
          try {
            await eventually(
              "tcpdump to listen",
              async () =>
                (await Deno.readTextFile(capLog).catch(() => "")).includes("listening on"),
            );
            for (const p of [pa, pb]) {
              for (const addr of p.addresses) {
                assert.ok(await ping(laptop.netns, addr), `laptop → ${p.name} ${addr}`);
              }
            }
            await new Promise((r) => setTimeout(r, 300));
          } finally {
            cap.kill("SIGINT");
            await cap.exited;
          }
          const seen = await Deno.readTextFile(capLog);
          assert.match(seen, /echo reply/, "the capture saw the pings");
          assert.doesNotMatch(seen, /redirect/i, "the nodes send the laptop no redirect");
          const rm = await lab.cli(
            ["client", "remove", "laptop", ...lab.adminFlags],
            laptop.netns,
          );
          assert.equal(rm.code, 0, rm.stderr);
          await new Promise((r) => setTimeout(r, 1000));
          for (const p of [pa, pb]) {
            assert.ok(
              !(await ping(laptop.netns, p.addresses[0] as string, 1)),
              `laptop still reaches ${p.name}`,
            );
          }
        } finally {
          await runner.exec(["wg-quick", "down", conf], { netns: laptop.netns });
        }
      },
    );

    await t.step(
      "a pod flow between nodes loses at most one packet while a node joins, gets pods and leaves",
      async () => {
        const log = `${lab.state.dir}/flow.log`;
        const flow = await startProcess(
          ["ping", "-n", "-i", "0.05", pb.addresses[0] as string],
          { netns: pa.netns, logFile: log },
        );
        await new Promise((r) => setTimeout(r, 300));
        const c = await lab.addNode(3);
        const pc: LabPod[] = [await lab.addPod(c, 1), await lab.addPod(c, 2)];
        assert.ok(await ping(pc[0]?.netns as string, pa.addresses[1] as string));
        for (const p of pc) await lab.deletePod(c, p);
        await lab.stopNode(c);
        const leave = await lab.cli(["node", "leave", ...nodePlaceFlags(c)], c.netns);
        assert.equal(leave.code, 0, leave.stdout + leave.stderr);
        await new Promise((r) => setTimeout(r, 500));
        flow.kill("SIGINT");
        await flow.exited;
        const m = (await Deno.readTextFile(log)).match(
          /(\d+) packets transmitted, (\d+) received/,
        );
        const sent = Number(m?.[1]), got = Number(m?.[2]);
        assert.ok(sent > 20, `sent ${sent}`);
        assert.ok(sent - got <= 1, `lost ${sent - got} of ${sent}`);
        const peersA = await runner.run(["wg", "show", a.iface, "peers"], { netns: a.netns });
        const keyC =
          (await runner.run(["wg", "show", c.iface, "public-key"], { netns: c.netns }).catch(() =>
            ""
          )).trim();
        assert.equal(keyC, "", "node3's interface is gone after leave");
        assert.equal(
          peersA.split("\n").filter(Boolean).length,
          2,
          "node1 has node2 and its pod only",
        );
      },
    );

    await t.step(
      "a simulated reboot (pod namespaces gone without DEL) leaks no address",
      async () => {
        const extra = [await lab.addPod(a, 2), await lab.addPod(a, 3)];
        assert.equal((await pods(a)).length, 3);
        await lab.stopNode(a);
        for (const p of extra) await runner.run(["ip", "netns", "del", p.netns]);
        lab.state.namespaces.splice(
          0,
          lab.state.namespaces.length,
          ...lab.state.namespaces.filter((n) => !extra.some((p) => p.netns === n)),
        );
        await lab.startNode(a);
        const left = await pods(a);
        assert.deepEqual(left.map((p) => p.containerId), [pa.containerId]);
        assert.ok(
          await ping(pa.netns, pb.addresses[0] as string),
          "the surviving pod still works",
        );
      },
    );
  },
);
