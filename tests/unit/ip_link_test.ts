/** The `ip` vocabulary (lib/ip/link.ts): the command lines it runs and what it reads back. */
import assert from "node:assert/strict";
import { Ip, parseLinks, RecordingRunner, stepLines } from "../../lib/ip/mod.ts";

Deno.test("steps on a link are one ip -batch: addresses (IPv6 without DAD), up with an MTU, routes", async () => {
  assert.deepEqual(
    stepLines("eth0", [
      { op: "address", cidr: "10.0.0.2/32" },
      { op: "address", cidr: "fd00::2/128", replace: true },
      { op: "up", mtu: 1380 },
      { op: "route", dst: "0.0.0.0/0" },
      { op: "route", dst: "::/0", replace: true },
    ]),
    [
      "addr add 10.0.0.2/32 dev eth0",
      "addr replace fd00::2/128 dev eth0 nodad",
      "link set eth0 mtu 1380 up",
      "route add 0.0.0.0/0 dev eth0",
      "route replace ::/0 dev eth0",
    ],
  );
  const runner = new RecordingRunner();
  await new Ip(runner).apply("eth0", [{ op: "up" }], { netns: "p1" });
  assert.deepEqual(runner.lines, ["nsenter --net=/run/netns/p1 -- ip -batch -"]);
  assert.equal(runner.commands[0]?.options.stdin, "link set eth0 up\n");
});

Deno.test("links, kinds and routes are read from ip -j", async () => {
  const addr = JSON.stringify([
    { ifname: "lo", flags: ["LOOPBACK", "UP"], mtu: 65536, addr_info: [] },
    {
      ifname: "eth0",
      flags: ["POINTOPOINT", "NOARP", "UP"],
      mtu: 1420,
      linkinfo: { info_kind: "wireguard" },
      addr_info: [{ local: "10.0.0.2", prefixlen: 32 }, { local: "fd00::2", prefixlen: 128 }],
    },
  ]);
  const runner = new RecordingRunner((argv) =>
    argv.includes("addr")
      ? { stdout: addr }
      : argv.includes("-4")
      ? { stdout: JSON.stringify([{ dst: "default" }, { dst: "10.1.0.0/16" }]) }
      : argv.includes("-6")
      ? { stdout: JSON.stringify([{ dst: "default" }]) }
      : undefined
  );
  const ip = new Ip(runner);
  assert.deepEqual(await ip.links({ netns: "p1" }), [
    { ifname: "lo", kind: undefined, up: true, mtu: 65536, cidrs: [] },
    {
      ifname: "eth0",
      kind: "wireguard",
      up: true,
      mtu: 1420,
      cidrs: ["10.0.0.2/32", "fd00::2/128"],
    },
  ]);
  assert.deepEqual(await ip.routesVia("eth0"), ["0.0.0.0/0", "10.1.0.0/16", "::/0"]);
  assert.deepEqual(parseLinks("not json"), []);
  assert.deepEqual(parseLinks(""), []);
});

Deno.test("a move renames, sets the MTU and drops the link-local address in one request", async () => {
  const runner = new RecordingRunner();
  await new Ip(runner).moveLink("wgp1", "/run/netns/p1", "eth0", 1380);
  assert.deepEqual(runner.lines, [
    "ip link set wgp1 netns /run/netns/p1 name eth0 mtu 1380 addrgenmode none",
  ]);
});
