import assert from "node:assert/strict";
import { kernelPods, Liveness } from "../../modes/node/recovery.ts";
import { parseUdpTable } from "../../lib/ip/sockets.ts";
import type { PeerState } from "../../lib/wireguard/mod.ts";

const SUBNETS = ["10.244.3.0/24", "fd00:10:244:3::/64"];

function peer(publicKey: string, endpoint: string | null, allowedIps: string[]): PeerState {
  return {
    publicKey,
    hasPresharedKey: false,
    endpoint,
    allowedIps,
    latestHandshake: 0,
    rxBytes: 0,
    txBytes: 0,
    persistentKeepalive: null,
  };
}

Deno.test("kernelPods() takes exactly the loopback peers with host routes in this node's subnets", () => {
  const peers = [
    peer("pod", "127.0.0.1:40001", ["10.244.3.7/32", "fd00:10:244:3:0::7/128"]),
    peer("pod4", "127.0.0.1:40002", ["10.244.3.8/32"]),
    peer("pod6", "[::1]:40003", ["fd00:10:244:3::9/128"]),
    peer("node", "192.0.2.12:51820", ["10.244.4.0/24", "fd00:10:244:4::/64"]),
    peer("client", null, ["10.250.0.2/32", "fd00:10:250::2/128"]),
    peer("other-subnet", "127.0.0.1:40004", ["10.244.4.7/32"]),
    peer("wide", "127.0.0.1:40005", ["10.244.3.0/25"]),
    peer("two-v4", "127.0.0.1:40006", ["10.244.3.10/32", "10.244.3.11/32"]),
    peer("not-local", "192.0.2.99:40007", ["10.244.3.12/32"]),
    peer("none", "127.0.0.1:40008", []),
  ];
  assert.deepEqual([...kernelPods(peers, SUBNETS).values()], [
    { publicKey: "pod", addresses: ["10.244.3.7", "fd00:10:244:3::7"], listenPort: 40001 },
    { publicKey: "pod4", addresses: ["10.244.3.8"], listenPort: 40002 },
    { publicKey: "pod6", addresses: ["fd00:10:244:3::9"], listenPort: 40003 },
  ]);
});

Deno.test("Liveness: a bound port proves a pod alive unless another pod's peer names it", () => {
  const live = new Liveness(new Set([40001, 40002, 40003]), [
    { key: "a", port: 40001 },
    { key: "b", port: 40002 },
    { key: "c", port: 40002 },
    { key: "d", port: 40009 },
  ]);
  const cases: [string, number, boolean][] = [
    ["a", 40001, true],
    ["b", 40002, false], // a port two pods name proves neither
    ["d", 40009, false], // not bound: its socket is gone
    ["e", 40003, true], // a record's port no peer names
    ["e", 40001, false], // a record's port another pod's peer names (reused)
    ["f", 0, false],
  ];
  for (const [key, port, alive] of cases) {
    assert.equal(live.alive(key, port), alive, `${key}:${port}`);
  }
});

Deno.test("parseUdpTable() reads the local ports of /proc/net/udp and udp6", () => {
  const v4 = [
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops",
    " 8697: 00000000:E2CC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 57432 2 00000000bc5c5fed 0",
    "  123: 0100007F:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0",
    "",
  ].join("\n");
  const v6 = [
    "  sl  local_address                         remote_address                        st",
    " 8697: 00000000000000000000000000000000:E2CC 00000000000000000000000000000000:0000 07",
  ].join("\n");
  assert.deepEqual(parseUdpTable(v4), [58060, 51820]);
  assert.deepEqual(parseUdpTable(v6), [58060]);
  assert.deepEqual(parseUdpTable(""), []);
});
