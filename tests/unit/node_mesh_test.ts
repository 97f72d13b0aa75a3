import assert from "node:assert/strict";
import type { PeerEntry } from "../../lib/api/cluster_types.ts";
import { desiredPeers, Mesh, planPeers } from "../../modes/node/mesh.ts";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { WireGuardControl } from "../../lib/wireguard/mod.ts";
import { getLogger } from "../../lib/log.ts";

const KEYS = [
  "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
  "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
  "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
  "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
  "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=",
] as const;

const self = { name: "a", publicKey: KEYS[0], subnets: ["10.244.0.0/24", "fd00:10:244::/64"] };
const node = (name: string, key: string, v4: string, v6: string): PeerEntry => ({
  kind: "node",
  name,
  publicKey: key,
  endpoint: `192.0.2.${name.charCodeAt(0)}:51820`,
  allowedIps: [v4, v6],
});
const b = node("b", KEYS[1], "10.244.1.0/24", "fd00:10:244:1::/64");
const c = node("c", KEYS[2], "10.244.2.0/24", "fd00:10:244:2::/64");

Deno.test("desiredPeers() skips itself and refuses overlaps with its own subnet or another peer", () => {
  const selfEntry = node("a", KEYS[0], "10.244.0.0/24", "fd00:10:244::/64");
  const intoMine = node("x", KEYS[3], "10.244.0.128/25", "fd00:10:245::/64");
  const dup = node("y", KEYS[4], "10.244.1.0/25", "fd00:10:246::/64");
  const { peers, refused } = desiredPeers([selfEntry, b, c, intoMine, dup], self);
  assert.deepEqual([...peers.keys()].sort(), [KEYS[1], KEYS[2]].sort());
  assert.deepEqual(refused.map((r) => r.name), ["x", "y"]);
  assert.match(refused[0]?.reason ?? "", /overlaps this node's subnet 10.244.0.0\/24/);
  assert.match(refused[1]?.reason ?? "", /overlaps 10.244.1.0\/24 of b/);
});

Deno.test("planPeers() changes only what differs and never touches pod peers", () => {
  const desired = new Map([[b.publicKey, b], [c.publicKey, c]]);
  const current = [
    {
      publicKey: b.publicKey,
      allowedIps: [...b.allowedIps].reverse(),
      endpoint: b.endpoint ?? null,
    },
    { publicKey: KEYS[3], allowedIps: ["10.244.0.5/32"], endpoint: "127.0.0.1:40000" },
    { publicKey: KEYS[4], allowedIps: ["10.244.9.0/24"], endpoint: null },
  ];
  const ops = planPeers(desired, current, new Set([KEYS[3]]));
  assert.deepEqual(ops.map((o) => o.op === "set" ? `set ${o.name}` : `remove ${o.publicKey}`), [
    "set c",
    `remove ${KEYS[4]}`,
  ]);
  assert.deepEqual(
    planPeers(desired, [...current.slice(0, 2), {
      publicKey: c.publicKey,
      allowedIps: c.allowedIps,
      endpoint: c.endpoint ?? null,
    }], new Set([KEYS[3]])),
    [],
  );
});

Deno.test("a client's learned endpoint is not a change", () => {
  const client: PeerEntry = {
    kind: "client",
    name: "laptop",
    publicKey: KEYS[3],
    allowedIps: ["10.250.0.2/32", "fd00:10:250::2/128"],
  };
  const ops = planPeers(new Map([[client.publicKey, client]]), [
    { publicKey: KEYS[3], allowedIps: client.allowedIps, endpoint: "192.0.2.99:41234" },
  ], new Set());
  assert.deepEqual(ops, []);
});

Deno.test("Mesh applies a delta as exactly one `wg set` and a snapshot as a diff", async () => {
  const dump = [[KEYS[0], KEYS[0], "51820", "off"].join("\t")];
  const runner = new RecordingRunner((argv) =>
    argv[1] === "show" ? { stdout: dump.join("\n") + "\n" } : undefined
  );
  const primed: string[] = [];
  const mesh = new Mesh({
    wg: new WireGuardControl(runner, { backend: "userspace" }),
    iface: "wgcni0",
    self,
    logger: getLogger("test"),
    podKeys: () => new Set(),
    prime: (p) => primed.push(p.name),
  });
  await mesh.apply({ type: "snapshot", revision: 5, peers: [b] });
  assert.deepEqual(runner.lines, [
    "wg show wgcni0 dump",
    `wg set wgcni0 peer ${b.publicKey} endpoint ${b.endpoint} allowed-ips ${
      b.allowedIps.join(",")
    }`,
  ]);
  runner.commands.length = 0;
  await mesh.apply({ type: "upsert", revision: 6, peer: c });
  assert.deepEqual(runner.lines, [
    `wg set wgcni0 peer ${c.publicKey} endpoint ${c.endpoint} allowed-ips ${
      c.allowedIps.join(",")
    }`,
  ]);
  runner.commands.length = 0;
  await mesh.apply({
    type: "delete",
    revision: 7,
    kind: "node",
    name: "b",
    publicKey: b.publicKey,
  });
  assert.deepEqual(runner.lines, [`wg set wgcni0 peer ${b.publicKey} remove`]);
  assert.equal(mesh.revision, 7);
  assert.equal(mesh.applied, 3);
  assert.deepEqual(primed, ["b", "c"], "each new node peer is primed once");
  await mesh.apply({ type: "upsert", revision: 8, peer: { ...c, endpoint: "192.0.2.99:51820" } });
  assert.deepEqual(primed, ["b", "c"], "a changed peer is not primed again");
});

Deno.test("a snapshot with many changes is applied in batched `wg set`s", async () => {
  const dump = [[KEYS[0], KEYS[0], "51820", "off"].join("\t")];
  const runner = new RecordingRunner((argv) =>
    argv[1] === "show" ? { stdout: dump.join("\n") + "\n" } : undefined
  );
  const primed: string[] = [];
  const mesh = new Mesh({
    wg: new WireGuardControl(runner, { backend: "userspace" }),
    iface: "wgcni0",
    self,
    logger: getLogger("test"),
    podKeys: () => new Set(),
    prime: (p) => primed.push(p.name),
  });
  const { generateKeyPair } = await import("../../lib/wireguard/mod.ts");
  const many: PeerEntry[] = [];
  for (let i = 0; i < 450; i++) {
    many.push(
      node(
        `n${i}`,
        (await generateKeyPair()).publicKey,
        `10.245.${i % 250}.${i < 250 ? 0 : 128}/25`,
        `fd00:20:${i.toString(16)}::/64`,
      ),
    );
  }
  await mesh.apply({ type: "snapshot", revision: 1, peers: many });
  const sets = runner.lines.filter((l) => l.startsWith("wg set"));
  assert.equal(sets.length, 3, "450 peers in batches of 200");
  assert.equal(sets.reduce((n, l) => n + (l.match(/ peer /g)?.length ?? 0), 0), 450);
  assert.equal(mesh.applied, 450);
  assert.deepEqual(primed, [], "a large resync primes nobody");
});
