/**
 * The MTU toward each node peer: the arithmetic, the routes it keeps on a
 * recording runner with a scripted probe, and what the kernel's answers are
 * read as. The real paths are in tests/e2e/node_mtu_test.ts.
 */
import assert from "node:assert/strict";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { getLogger } from "../../lib/log.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";
import { PathMtus, type PathPeer, SystemPathProbe, tunnelMtu } from "../../modes/node/path_mtu.ts";

Deno.test("tunnelMtu(): the path less its family's overhead, within the interface's, at least 1280 with IPv6", () => {
  const cases: [number, 4 | 6, number, boolean, number][] = [
    [1500, 4, 1420, true, 1420],
    [1400, 4, 1420, true, 1340],
    [1400, 6, 1420, true, 1320],
    [1300, 4, 1420, true, 1280],
    [1300, 4, 1420, false, 1240],
    [9000, 6, 8920, false, 8920],
  ];
  for (const [path, family, iface, v6, want] of cases) {
    assert.equal(tunnelMtu(path, family, iface, v6), want, `${path} over IPv${family}`);
  }
});

const node = (name: string, publicKey: string, endpoint: string, mtu?: number): PeerEntry => ({
  kind: "node",
  name,
  publicKey,
  endpoint,
  allowedIps: [`10.244.${name.length}.0/24`, `fd00:10:244:${name.length}::/64`],
  ...(mtu !== undefined ? { mtu } : {}),
});

function scripted(peers: PathPeer[], probed: Map<string, number>) {
  const runner = new RecordingRunner((argv) =>
    argv[1] === "-j" && argv[3] === "route" ? { stdout: "[]" } : undefined
  );
  const mtus = new PathMtus({
    runner,
    iface: "wgcni0",
    ifaceMtu: 1420,
    ipv6Pods: true,
    linkMtu: 1500,
    peers: () => peers,
    probe: { pathMtu: (host) => Promise.resolve(probed.get(host)) },
    logger: getLogger("test"),
  });
  const batches = () =>
    runner.commands.filter((c) => c.argv.join(" ") === "ip -batch -").map((c) => c.options.stdin);
  return { runner, mtus, batches };
}

Deno.test("PathMtus: a narrower path gets routes with its MTU, taken away when it widens or the peer goes", async () => {
  const b = node("b", "kb", "192.0.2.12:51820");
  const c = node("cc", "kc", "192.0.2.13:51820", 1400);
  const peers: PathPeer[] = [{ entry: b, endpoint: b.endpoint }, {
    entry: c,
    endpoint: c.endpoint,
  }];
  const probed = new Map([["192.0.2.12", 1500], ["192.0.2.13", 1500]]);
  const { mtus, batches } = scripted(peers, probed);
  // c reported a 1400-byte link: its subnets get 1340; b's path carries the interface's MTU.
  assert.equal(await mtus.refresh(), 1);
  assert.deepEqual(batches(), [
    "route replace 10.244.2.0/24 dev wgcni0 mtu 1340\nroute replace fd00:10:244:2::/64 dev wgcni0 mtu 1340\n",
  ]);
  assert.deepEqual([...mtus.learnt], [["kb", 1420], ["kc", 1340]]);
  // Nothing new: nothing done.
  await mtus.refresh();
  assert.equal(batches().length, 1);
  // The kernel learnt a narrower hop toward b.
  probed.set("192.0.2.12", 1380);
  await mtus.refresh();
  assert.equal(
    batches().at(-1),
    "route replace 10.244.1.0/24 dev wgcni0 mtu 1320\nroute replace fd00:10:244:1::/64 dev wgcni0 mtu 1320\n",
  );
  // b's path widens again; c goes.
  probed.set("192.0.2.12", 1500);
  peers.splice(1, 1);
  assert.equal(await mtus.refresh(), 0);
  const removed = batches().slice(-2).join("");
  for (
    const gone of ["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.2.0/24", "fd00:10:244:2::/64"]
  ) {
    assert.match(removed, new RegExp(`route del ${gone.replaceAll(".", "\\.")} dev wgcni0`), gone);
  }
  assert.deepEqual([...mtus.learnt], [["kb", 1420]]);
});

Deno.test("PathMtus: only nodes with an endpoint; never below 1280 with IPv6 pods", async () => {
  const client: PeerEntry = {
    kind: "client",
    name: "laptop",
    publicKey: "kl",
    allowedIps: ["100.64.0.2/32"],
  };
  const tiny = node("t", "kt", "[2001:db8::5]:51820", 1200);
  const { mtus, batches } = scripted([
    { entry: client, endpoint: undefined },
    { entry: tiny, endpoint: tiny.endpoint },
  ], new Map());
  await mtus.refresh();
  assert.deepEqual([...mtus.learnt], [["kt", 1280]]);
  assert.match(batches()[0] ?? "", /mtu 1280/);
});

Deno.test("SystemPathProbe reads the route's MTU (a learnt one included), no more than the link's, sending nothing", async () => {
  let learnt: number | undefined;
  const runner = new RecordingRunner((argv) => {
    const line = argv.join(" ");
    if (line.startsWith("ip -j route get")) {
      return {
        stdout: JSON.stringify([{
          dev: "eth0",
          ...(learnt ? { metrics: [{ mtu: learnt }] } : {}),
        }]),
      };
    }
    if (line.startsWith("ip -j link show dev eth0")) return { stdout: '[{"mtu":1500}]' };
    return undefined;
  });
  const probe = new SystemPathProbe(runner);
  assert.equal(await probe.pathMtu("192.0.2.12"), 1500);
  learnt = 1400;
  assert.equal(await probe.pathMtu("192.0.2.12"), 1400);
  learnt = 9000;
  assert.equal(await probe.pathMtu("192.0.2.12"), 1500);
  assert.ok(runner.commands.every((c) => c.argv[0] === "ip"), "nothing but ip");
  assert.equal(
    await new SystemPathProbe(new RecordingRunner(() => ({ code: 2 }))).pathMtu("x"),
    undefined,
  );
});
