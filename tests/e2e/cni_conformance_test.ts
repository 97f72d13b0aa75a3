/**
 * CNI behaviour against the real plugin executable and a real node manager
 * in network namespaces, at every version where each command exists
 * (../shared CNI-CONFORMANCE list), plus concurrency, GC and chaining.
 */
import assert from "node:assert/strict";
import {
  allocations as reservations,
  eventually,
  expectedBackend,
  labTest,
  podInterfaceExists,
  SLOW_MACHINE,
  step,
  udpBound,
  waitS,
  wireguardGoProcesses,
} from "../_helpers/e2e.ts";
import type { Lab, LabNodeState } from "../../modes/demo/lab.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { podWgName } from "../../modes/node/pods.ts";

const runner = new SystemRunner();
const VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

let seq = 0;
async function newNetns(lab: Lab): Promise<string> {
  const name = `wgd-${lab.state.id}-c${(seq++).toString(36)}`;
  await runner.run(["ip", "netns", "add", name]);
  lab.state.namespaces.push(name);
  return `/run/netns/${name}`;
}

async function nodePeers(node: LabNodeState): Promise<string[]> {
  return (await runner.run(["wg", "show", node.iface, "allowed-ips"], { netns: node.netns }))
    .split("\n").filter(Boolean);
}

function plugin(lab: Lab, node: LabNodeState, cmd: string, a: {
  id?: string;
  ifname?: string;
  netns?: string;
  version?: string;
  extra?: Record<string, unknown>;
}) {
  return lab.plugin(node, cmd, {
    containerId: a.id ?? "",
    ifname: a.ifname ?? "",
    netns: a.netns ?? "",
    extra: { ...(a.version ? { cniVersion: a.version } : {}), ...a.extra },
  });
}

labTest("CNI conformance of wgcni with a real node manager", async (lab, t) => {
  await lab.startCluster();
  const node = await lab.addNode(1);
  const gateway = (await createLocalClient(node.socket).node() as { gateways: string[] }).gateways;

  for (const v of VERSIONS) {
    // The versions differ in the plugin's result only: one of them on a second backend.
    await step(t, `${v}: ADD, CHECK, DEL, DEL again`, async () => {
      const netns = await newNetns(lab);
      const id = `conf-${v.replaceAll(".", "")}`;
      const add = await plugin(lab, node, "ADD", { id, ifname: "eth0", netns, version: v });
      assert.equal(add.code, 0, add.stdout);
      const result = JSON.parse(add.stdout);
      assert.equal(result.cniVersion, v);
      assert.equal(result.interfaces[0].sandbox, netns);
      assert.equal(result.ips.length, 2);
      for (const ip of result.ips) {
        assert.equal(ip.interface, 0);
        assert.equal(
          ip.version,
          v < "1.0.0" ? (ip.address.includes(":") ? "6" : "4") : undefined,
        );
      }
      assert.deepEqual(result.routes.map((r: { dst: string }) => r.dst), ["0.0.0.0/0", "::/0"]);
      for (const gw of gateway) {
        const r = await runner.exec(["ping", "-c", "1", "-W", waitS(), gw], { netns });
        assert.equal(r.code, 0, `pod → node ${gw}`);
      }
      const withResult = (cmd: string) =>
        plugin(lab, node, cmd, {
          id,
          ifname: "eth0",
          netns,
          version: v,
          extra: { prevResult: result },
        });
      const check = await withResult("CHECK");
      if (v !== "0.3.1") {
        assert.equal(check.code, 0, check.stdout);
      } else {
        assert.equal(JSON.parse(check.stdout).code, 1, "CHECK does not exist in 0.3.1");
      }
      for (let i = 0; i < 2; i++) {
        const del = await withResult("DEL");
        assert.equal(del.code, 0, del.stdout);
      }
      assert.deepEqual(await reservations(node), []);
      const link = await runner.exec(["ip", "link", "show", "eth0"], { netns });
      assert.notEqual(link.code, 0, "eth0 is gone");
    }, { neutral: v !== "1.0.0" });
  }

  await t.step(
    "a pod listens in the node's namespace on the port its node-side peer names; on kernel WireGuard no process runs for it",
    async () => {
      const netns = await newNetns(lab);
      const add = await plugin(lab, node, "ADD", { id: "port", ifname: "eth0", netns });
      assert.equal(add.code, 0, add.stdout);
      const wgName = await podWgName(node.iface, "port", "eth0");
      const backend = await expectedBackend();
      // Its own view: by its name in the pod (kernel), or through the
      // control socket of its creation name (wireguard-go).
      const show = (what: string) =>
        backend === "kernel"
          ? runner.run(["wg", "show", "eth0", what], { netns })
          : runner.run(["wg", "show", wgName, what], { netns: node.netns });
      const port = Number((await show("listen-port")).trim());
      const key = (await show("public-key")).trim();
      assert.ok(port > 0, `listen port ${port}`);
      const endpoints = await runner.run(["wg", "show", node.iface, "endpoints"], {
        netns: node.netns,
      });
      assert.ok(
        endpoints.split("\n").includes(`${key}\t127.0.0.1:${port}`),
        `node-side peer of ${key} at port ${port}: ${endpoints}`,
      );
      const listens = (ns: string) => udpBound(ns, port);
      assert.ok(await listens(node.netns), "the pod's UDP socket is in the node's namespace");
      assert.ok(!(await listens(netns)), "and not in the pod's");
      for (const gw of gateway) {
        const r = await runner.exec(["ping", "-c", "1", "-W", waitS(), gw], { netns });
        assert.equal(r.code, 0, `pod → node ${gw}`);
      }
      const procs = (await wireguardGoProcesses()).filter((p) => p.name === wgName);
      assert.equal(procs.length, backend === "kernel" ? 0 : 1, `wireguard-go for ${wgName}`);
      if (backend === "kernel") {
        assert.deepEqual(await wireguardGoProcesses(), [], "no wireguard-go at all");
      }
      const del = await plugin(lab, node, "DEL", { id: "port", ifname: "eth0", netns });
      assert.equal(del.code, 0, del.stdout);
      await eventually("the port closed after DEL", async () => !(await listens(node.netns)));
    },
  );

  await t.step(
    "DEL succeeds for an unknown attachment, without NETNS, and after the netns is gone",
    async () => {
      assert.equal(
        (await plugin(lab, node, "DEL", { id: "never-known", ifname: "eth0" })).code,
        0,
      );
      const netns = await newNetns(lab);
      const add = await plugin(lab, node, "ADD", { id: "gone", ifname: "eth0", netns });
      assert.equal(add.code, 0);
      await runner.run(["ip", "netns", "del", netns.replace("/run/netns/", "")]);
      const del = await plugin(lab, node, "DEL", { id: "gone", ifname: "eth0", netns });
      assert.equal(del.code, 0, del.stdout);
      assert.deepEqual(await reservations(node), []);
      assert.equal((await nodePeers(node)).length, 0, "the node-side peer is gone too");
      const add2 = await plugin(lab, node, "ADD", {
        id: "gone2",
        ifname: "eth0",
        netns: await newNetns(lab),
      });
      assert.equal(add2.code, 0);
      assert.equal(
        (await plugin(lab, node, "DEL", { id: "gone2", ifname: "eth0" })).code,
        0,
        "empty NETNS",
      );
      assert.deepEqual(await reservations(node), []);
    },
  );

  await t.step(
    "ADD into a missing netns or onto an existing ifname fails and leaves nothing",
    async () => {
      const missing = await plugin(lab, node, "ADD", {
        id: "m",
        ifname: "eth0",
        netns: "/run/netns/wgcni-no-such",
      });
      assert.notEqual(missing.code, 0);
      assert.match(JSON.parse(missing.stdout).msg, /does not exist/);
      const netns = await newNetns(lab);
      await runner.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], {
        netns,
      });
      const taken = await plugin(lab, node, "ADD", { id: "t", ifname: "eth0", netns });
      assert.notEqual(taken.code, 0);
      assert.match(JSON.parse(taken.stdout).msg, /already exists/);
      assert.deepEqual(await reservations(node), []);
      assert.equal((await nodePeers(node)).length, 0);
      const wgName = await podWgName(node.iface, "t", "eth0");
      await eventually(
        `the rolled-back pod interface ${wgName} gone`,
        async () => !(await podInterfaceExists(wgName, { node: node.netns, pod: netns })),
        5000,
      );
    },
  );

  await t.step("CHECK notices a missing route and a missing node-side peer", async () => {
    const netns = await newNetns(lab);
    const add = await plugin(lab, node, "ADD", { id: "chk", ifname: "eth0", netns });
    const prev = JSON.parse(add.stdout);
    await runner.run(["ip", "route", "add", "192.0.2.0/24", "dev", "eth0"], { netns });
    assert.equal(
      (await plugin(lab, node, "CHECK", {
        id: "chk",
        ifname: "eth0",
        netns,
        extra: { prevResult: prev },
      })).code,
      0,
      "extra routes are tolerated",
    );
    await runner.run(["ip", "route", "del", "default", "dev", "eth0"], { netns });
    const noRoute = await plugin(lab, node, "CHECK", {
      id: "chk",
      ifname: "eth0",
      netns,
      extra: { prevResult: prev },
    });
    assert.match(JSON.parse(noRoute.stdout).msg, /default route/);
    await runner.run(["ip", "route", "add", "default", "dev", "eth0"], { netns });
    const key = (await nodePeers(node))[0]?.split("\t")[0] as string;
    await runner.run(["wg", "set", node.iface, "peer", key, "remove"], { netns: node.netns });
    const noPeer = await plugin(lab, node, "CHECK", {
      id: "chk",
      ifname: "eth0",
      netns,
      extra: { prevResult: prev },
    });
    assert.match(JSON.parse(noPeer.stdout).msg, /node-side peer/);
    assert.equal(
      (await plugin(lab, node, "DEL", { id: "chk", ifname: "eth0", netns })).code,
      0,
    );
  });

  await t.step("a pod cannot send from an address that is not its own", async () => {
    const netns = await newNetns(lab);
    const add = JSON.parse(
      (await plugin(lab, node, "ADD", { id: "forge", ifname: "eth0", netns })).stdout,
    );
    const own = add.ips[0].address.split("/")[0] as string;
    const forged = own.replace(/\.\d+$/, ".250");
    await runner.run(["ip", "addr", "add", `${forged}/32`, "dev", "eth0"], { netns });
    assert.equal(
      (await runner.exec(["ping", "-c", "1", "-W", waitS(1), "-I", own, gateway[0] as string], {
        netns,
      })).code,
      0,
    );
    const r = await runner.exec([
      "ping",
      "-c",
      "2",
      "-W",
      "1",
      "-I",
      forged,
      gateway[0] as string,
    ], { netns });
    assert.notEqual(r.code, 0, "a forged source got through");
    assert.equal(
      (await plugin(lab, node, "DEL", { id: "forge", ifname: "eth0", netns })).code,
      0,
    );
  });

  await t.step("GC with 10 attachments listing 4 releases exactly the other 6", async () => {
    const ids = Array.from({ length: 10 }, (_, i) => `gc${i}`);
    for (const id of ids) {
      assert.equal(
        (await plugin(lab, node, "ADD", { id, ifname: "eth0", netns: await newNetns(lab) }))
          .code,
        0,
      );
    }
    const keep = ids.slice(0, 4).map((containerID) => ({ containerID, ifname: "eth0" }));
    const none = await plugin(lab, node, "GC", { version: "1.1.0" });
    assert.equal(none.code, 0);
    assert.equal(
      (await reservations(node)).length,
      10,
      "no valid-attachments key: nothing released",
    );
    const gc = await plugin(lab, node, "GC", {
      version: "1.1.0",
      extra: { "cni.dev/valid-attachments": keep },
    });
    assert.equal(gc.code, 0, gc.stdout);
    assert.deepEqual(
      (await reservations(node)).map((r) => r.containerId).sort(),
      ids.slice(0, 4),
    );
    assert.equal((await nodePeers(node)).length, 4);
    const all = await plugin(lab, node, "GC", {
      version: "1.1.0",
      extra: { "cni.dev/valid-attachments": [] },
    });
    assert.equal(all.code, 0);
    assert.deepEqual(await reservations(node), []);
    assert.equal((await nodePeers(node)).length, 0);
  });

  // Under emulation every plugin start costs seconds of CPU (the node manager's
  // answers would come after the plugin's time limit): fewer at once, once.
  const [atOnce, rounds] = SLOW_MACHINE ? [10, 1] : [50, 5];
  await t.step(
    `${atOnce} ADDs at once get distinct addresses and reach the node; ${atOnce} DELs leave nothing (${rounds} rounds)`,
    async () => {
      for (let round = 0; round < rounds; round++) {
        const netnses = await Promise.all(
          Array.from({ length: atOnce }, () => newNetns(lab)),
        );
        const adds = await Promise.all(
          netnses.map((netns, i) =>
            plugin(lab, node, "ADD", { id: `r${round}p${i}`, ifname: "eth0", netns })
          ),
        );
        for (const a of adds) assert.equal(a.code, 0, a.stdout + a.stderr);
        const addrs = adds.flatMap((a) =>
          JSON.parse(a.stdout).ips.map((ip: { address: string }) => ip.address)
        );
        assert.equal(new Set(addrs).size, 2 * atOnce, "distinct addresses");
        const pings = await Promise.all(
          netnses.map((netns) =>
            runner.exec(["ping", "-c", "1", "-W", waitS(), gateway[0] as string], { netns })
          ),
        );
        assert.equal(pings.filter((p) => p.code !== 0).length, 0, "every pod reaches its node");
        const dels = await Promise.all(
          netnses.map((netns, i) =>
            plugin(lab, node, "DEL", { id: `r${round}p${i}`, ifname: "eth0", netns })
          ),
        );
        for (const d of dels) assert.equal(d.code, 0, d.stdout);
        assert.deepEqual(await reservations(node), []);
        assert.equal((await nodePeers(node)).length, 0);
        for (const netns of netnses) {
          const links = await runner.run(["ip", "-o", "link"], { netns });
          assert.equal(links.trim().split("\n").length, 1, "only lo is left");
          await runner.run(["ip", "netns", "del", netns.replace("/run/netns/", "")]);
          lab.state.namespaces.splice(
            lab.state.namespaces.indexOf(netns.replace("/run/netns/", "")),
            1,
          );
        }
      }
    },
  );

  await t.step("chained with the reference portmap, bandwidth and tuning plugins", async () => {
    const netns = await newNetns(lab);
    const base = { cniVersion: "1.0.0", name: "wgcni" };
    const wgConf = await lab.netConf(node, "1.0.0");
    const chain: Record<string, unknown>[] = [
      { ...wgConf },
      {
        type: "portmap",
        capabilities: { portMappings: true },
        runtimeConfig: {
          portMappings: [{ hostPort: 8080, containerPort: 80, protocol: "tcp" }],
        },
      },
      { type: "bandwidth", capabilities: { bandwidth: true } },
      { type: "tuning", sysctl: { "net.ipv4.conf.all.forwarding": "1" } },
    ];
    const exec = (conf: Record<string, unknown>, cmd: string, prev?: unknown) => {
      const bin = conf.type === "wgcni" ? lab.pluginPath : `/usr/lib/cni/${conf.type}`;
      return runner.exec([bin], {
        netns: node.netns,
        env: {
          CNI_COMMAND: cmd,
          CNI_CONTAINERID: "chain1",
          CNI_NETNS: netns,
          CNI_IFNAME: "eth0",
          CNI_PATH: "/usr/lib/cni",
        },
        stdin: JSON.stringify({ ...conf, ...base, ...(prev ? { prevResult: prev } : {}) }),
      });
    };
    let prev: unknown;
    for (const conf of chain) {
      const r = await exec(conf, "ADD", prev);
      assert.equal(r.code, 0, `${conf.type} ADD: ${r.stdout} ${r.stderr}`);
      prev = JSON.parse(r.stdout);
    }
    const final = prev as { ips: { address: string }[]; interfaces: { name: string }[] };
    assert.equal(final.ips.length, 2, "the chain carries wgcni's addresses");
    assert.equal(final.interfaces[0]?.name, "eth0");
    for (const conf of chain) {
      const r = await exec(conf, "CHECK", prev);
      // Debian's portmap (1.1.1) looks for its IPv4 rule in the IPv6 table when the
      // result is dual-stack; its rules are checked directly below instead.
      if (conf.type === "portmap" && r.code !== 0) {
        assert.match(r.stdout, /could not check ipv6 dnat: rule .*-s \d+\.\d+\.\d+\.\d+\/32/);
        continue;
      }
      // bandwidth's CHECK requires a veth pair; a wgcni pod interface is a WireGuard
      // interface with no host-side peer link (a known limitation, see the README).
      if (conf.type === "bandwidth" && r.code !== 0) {
        assert.match(r.stdout, /has no veth peer/);
        continue;
      }
      assert.equal(r.code, 0, `${conf.type} CHECK: ${r.stdout} ${r.stderr}`);
    }
    const nat = await runner.run(["iptables-save", "-t", "nat"], { netns: node.netns });
    const v4 = final.ips.find((ip) => !ip.address.includes(":"))?.address.split("/")[0];
    assert.match(nat, new RegExp(`--dport 8080 -j DNAT --to-destination ${v4}:80`));
    for (const conf of [...chain].reverse()) {
      const r = await exec(conf, "DEL", prev);
      assert.equal(r.code, 0, `${conf.type} DEL: ${r.stdout} ${r.stderr}`);
    }
    assert.deepEqual(await reservations(node), []);
  });

  await t.step(
    "STATUS is 0 when ready; with the node manager stopped STATUS is 50 and ADD 11",
    async () => {
      assert.equal((await plugin(lab, node, "STATUS", { version: "1.1.0" })).code, 0);
      await lab.stopNode(node);
      const status = await plugin(lab, node, "STATUS", { version: "1.1.0" });
      assert.equal(JSON.parse(status.stdout).code, 50);
      const add = await plugin(lab, node, "ADD", {
        id: "late",
        ifname: "eth0",
        netns: await newNetns(lab),
      });
      assert.equal(JSON.parse(add.stdout).code, 11);
      await lab.startNode(node);
      assert.equal(
        (await plugin(lab, node, "STATUS", { version: "1.1.0" })).code,
        0,
        "ready again after restart",
      );
    },
  );

  await t.step(
    "ADDs at once right after a restart that adopted the node interface all succeed",
    async () => {
      // The restarted node manager has not created an interface yet: the
      // first ADDs find out the backend while others arrive.
      const n = SLOW_MACHINE ? 10 : 40;
      const netnses = await Promise.all(Array.from({ length: n }, () => newNetns(lab)));
      const adds = await Promise.all(
        netnses.map((netns, i) =>
          plugin(lab, node, "ADD", { id: `re${i}`, ifname: "eth0", netns })
        ),
      );
      for (const a of adds) assert.equal(a.code, 0, a.stdout + a.stderr);
      // The DELs only clean up: a few at a time under an emulated CPU,
      // where ten at once can outlast the plugin's 30 s limit.
      const width = SLOW_MACHINE ? 3 : n;
      for (let from = 0; from < n; from += width) {
        const dels = await Promise.all(
          netnses.slice(from, from + width).map((netns, j) =>
            plugin(lab, node, "DEL", { id: `re${from + j}`, ifname: "eth0", netns })
          ),
        );
        for (const d of dels) assert.equal(d.code, 0, d.stdout);
      }
      assert.deepEqual(await reservations(node), []);
    },
  );
});
