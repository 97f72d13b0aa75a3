import assert from "node:assert/strict";
import { ago, bytes, liveness, renderStatus, statusJson } from "../../modes/node/status.ts";

const NOW = 1_800_000_000;
const view = {
  node: {
    name: "node1",
    connected: true,
    revision: 7,
    interface: "wgcni0",
    backend: "kernel",
    listenPort: 51820,
    mtu: 1420,
    endpoint: "192.0.2.11:51820",
    publicKey: "K",
    subnets: ["10.244.1.0/24", "fd00:10:244:1::/64"],
  },
  peers: [
    {
      name: "node/node2",
      endpoint: "192.0.2.12:51820",
      allowedIps: ["10.244.2.0/24"],
      latestHandshake: NOW - 30,
      rxBytes: 1536,
      txBytes: 5 * 2 ** 20,
    },
    {
      name: "node/node3",
      endpoint: "192.0.2.13:51820",
      allowedIps: ["10.244.3.0/24"],
      latestHandshake: NOW - 600,
      rxBytes: 10,
      txBytes: 0,
    },
    {
      name: "client/laptop",
      endpoint: null,
      allowedIps: ["10.250.0.2/32"],
      latestHandshake: 0,
      rxBytes: 0,
      txBytes: 0,
    },
  ],
  allocations: {
    free: "252",
    pods: [{
      containerId: "0123456789abcdef0123",
      ifname: "eth0",
      addresses: ["10.244.1.2"],
      phase: "ready",
      podName: "web/frontend-1",
      nodeInterface: "wgp0123abcd4567",
    }],
  },
};

Deno.test("status marks peers that lost their session and shows bytes with units", () => {
  assert.equal(liveness(NOW - 30, NOW), "ok");
  assert.equal(liveness(NOW - 181, NOW), "stale");
  assert.equal(liveness(0, NOW), "never");
  assert.equal(bytes(512), "512 B");
  assert.equal(bytes(1536), "1.5 KiB");
  assert.equal(bytes(5 * 2 ** 20), "5.0 MiB");
  assert.equal(ago(NOW - 3 * 86_400, NOW), "3d ago");
  const text = renderStatus(view, NOW);
  assert.match(text, /backend kernel WireGuard/);
  const rows = text.split("\n").filter((l) => /^ {2}(NAME|node\/|client\/)/.test(l));
  assert.equal(rows.length, 4);
  // Aligned: every column starts where its heading does.
  const at = rows[0]!.indexOf("ENDPOINT");
  for (const r of rows.slice(1)) assert.ok(r.slice(at - 2, at) === "  ", r);
  assert.match(text, /node\/node2 .* 30s ago +1\.5 KiB +5\.0 MiB/);
  assert.match(text, /node\/node3 .* 10m ago \(stale\)/);
  assert.match(text, /client\/laptop +\(dials in\) .* never/);
  assert.match(text, /pods \(1, 252 addresses free\)/);
  assert.match(text, /web\/frontend-1 +0123456789ab… +eth0 +wgp0123abcd4567 +10\.244\.1\.2 +ready/);
});

Deno.test("status --json has numbers as numbers and each peer's state", () => {
  const j = statusJson(view, NOW) as {
    allocations: { free: unknown };
    peers: { name: string; state: string }[];
  };
  assert.equal(j.allocations.free, 252);
  assert.deepEqual(j.peers.map((p) => p.state), ["ok", "stale", "never"]);
});

Deno.test("status lists workloads with their own interface beside the pods", () => {
  const none = renderStatus(view, NOW);
  assert.match(none, /workloads with their own interface \(0\):$/);
  const text = renderStatus({
    ...view,
    allocations: {
      ...view.allocations,
      workloads: [
        {
          name: "vm-1",
          phase: "ready",
          addresses: ["10.244.1.9/32", "fd00:10:244:1::9/128"],
          publicKey: "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
          endpointPort: 40001,
        },
        { name: "vm-2", phase: "allocated", addresses: ["10.244.1.10/32"] },
      ],
    },
  }, NOW);
  assert.match(text, /workloads with their own interface \(2\):/);
  assert.match(
    text,
    /vm-1 +10\.244\.1\.9 fd00:10:244:1::9 +TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi\+y71lOWWXX0= +127\.0\.0\.1:40001 +ready/,
  );
  assert.match(text, /vm-2 +10\.244\.1\.10 +- +\(dials in\) +allocated/);
});

Deno.test("status lists each pod's direct peers with their node and last handshake", () => {
  const off = renderStatus({ ...view, node: { ...view.node, podPaths: "hub" } }, NOW);
  assert.match(off, /direct pod paths \(off: --pod-paths hub\):/);
  const text = renderStatus({
    ...view,
    node: { ...view.node, podPaths: "direct" },
    allocations: {
      ...view.allocations,
      pods: [{
        ...view.allocations.pods[0]!,
        direct: [{
          addresses: ["10.244.2.7", "fd00:10:244:2::7"],
          node: "node2",
          endpoint: "192.0.2.12:40123",
          latestHandshake: NOW - 12,
        }],
      }],
    },
  }, NOW);
  assert.match(text, /direct pod paths \(1\):/);
  assert.match(
    text,
    /10\.244\.1\.2 +10\.244\.2\.7 fd00:10:244:2::7 +node2 +192\.0\.2\.12:40123 +12s ago/,
  );
});

Deno.test("status shows a node behind NAT, NAT'd peers and relayed ones", () => {
  const natView = {
    ...view,
    node: { ...view.node, endpoint: "10.9.0.2:51820", nat: true, seenAt: "198.51.100.2:51820" },
    peers: [
      { ...view.peers[0]!, endpoint: "203.0.113.1:7601", nat: true, path: "relayed" },
      { ...view.peers[1]!, latestHandshake: NOW - 5, nat: true, path: "direct" },
    ],
  };
  const text = renderStatus(natView, NOW);
  assert.match(text, /endpoint +10\.9\.0\.2:51820 +\(behind NAT, seen at 198\.51\.100\.2:51820\)/);
  assert.match(text, /node\/node2 +203\.0\.113\.1:7601 \(behind NAT\) relayed /);
  assert.match(text, /node\/node3 +192\.0\.2\.13:51820 \(behind NAT\) /);
  assert.doesNotMatch(text, /node3 .*relayed/);
  const j = statusJson(natView, NOW) as { peers: { name: string; path?: string }[] };
  assert.deepEqual(j.peers.map((p) => p.path), ["relayed", "direct"]);
});

Deno.test("status says when the node's key is rotating, and to what", () => {
  assert.doesNotMatch(renderStatus(view, NOW), /rotating/);
  const next = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
  const text = renderStatus({
    ...view,
    node: { ...view.node, rotating: { to: next, switchAt: Date.UTC(2026, 11, 2, 12) } },
  }, NOW);
  assert.match(
    text,
    /^public key \S+ {2}\(rotating to TrMvSoP4\S+ at 2026-12-02T12:00:00\.000Z\)$/m,
  );
});
