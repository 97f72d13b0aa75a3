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

/** A Mesh on a recording runner, and the interface's peers as its `wg set`s left them. */
function meshOnFake(podKeys: ReadonlySet<string> = new Set()) {
  const dump = [[KEYS[0], KEYS[0], "51820", "off"].join("\t")];
  const runner = new RecordingRunner((argv) =>
    argv[1] === "show" ? { stdout: dump.join("\n") + "\n" } : undefined
  );
  const mesh = new Mesh({
    wg: new WireGuardControl(runner, { backend: "userspace" }),
    iface: "wgcni0",
    self,
    logger: getLogger("test"),
    podKeys: () => podKeys,
  });
  const iface = new Map<string, string>();
  let seen = 0;
  const state = () => {
    for (const line of runner.lines.slice(seen)) {
      if (!line.startsWith("wg set")) continue;
      for (const part of line.split(" peer ").slice(1)) {
        const [key, ...rest] = part.split(" ");
        if (rest[0] === "remove") iface.delete(key!);
        else iface.set(key!, rest[rest.indexOf("allowed-ips") + 1]!);
      }
    }
    seen = runner.lines.length;
    return iface;
  };
  return { runner, mesh, state };
}

/** A distinct valid public key per number. */
const key = (i: number) => {
  const bytes = new Uint8Array(32).fill(7);
  bytes[0] = i & 255;
  bytes[1] = i >> 8;
  return btoa(String.fromCharCode(...bytes));
};

Deno.test("one delta with thousands of peers present is one `wg set` touching only that peer", async () => {
  const { runner, mesh } = meshOnFake();
  const many: PeerEntry[] = [];
  for (let i = 0; i < 2000; i++) {
    many.push(
      node(
        `n${i}`,
        key(1000 + i),
        `10.246.${i >> 8}.${i & 255}/32`,
        `fd00:30::${i.toString(16)}/128`,
      ),
    );
  }
  await mesh.apply({ type: "snapshot", revision: 1, peers: many });
  runner.commands.length = 0;
  const fresh = node("fresh", KEYS[3], "10.247.0.0/24", "fd00:31::/64");
  await mesh.apply({ type: "upsert", revision: 2, peer: fresh });
  assert.deepEqual(runner.lines, [
    `wg set wgcni0 peer ${KEYS[3]} endpoint ${fresh.endpoint} allowed-ips ${
      fresh.allowedIps.join(",")
    }`,
  ]);
  runner.commands.length = 0;
  // The same node with a new key: the new key set, then the old one removed.
  await mesh.apply({ type: "upsert", revision: 3, peer: { ...fresh, publicKey: KEYS[4] } });
  assert.deepEqual(runner.lines.map((l) => l.split(" ").slice(0, 5).join(" ")), [
    `wg set wgcni0 peer ${KEYS[4]}`,
    `wg set wgcni0 peer ${KEYS[3]}`,
  ]);
  assert.match(runner.lines[1]!, / remove$/);
  runner.commands.length = 0;
  await mesh.apply({ type: "upsert", revision: 4, peer: { ...fresh, publicKey: KEYS[4] } });
  assert.deepEqual(runner.lines, [], "an unchanged peer is no operation");
  await mesh.apply({
    type: "delete",
    revision: 5,
    kind: "node",
    name: "n7",
    publicKey: many[7]!.publicKey,
  });
  assert.deepEqual(runner.lines, [`wg set wgcni0 peer ${many[7]!.publicKey} remove`]);
  assert.equal(mesh.peers.length, 2000);
});

Deno.test("deltas, overlaps and refusals included, leave the interface as the full plan says", async () => {
  // A small world so that names, keys and subnets collide often.
  let seed = 42;
  const rand = (n: number) => { // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32 * n) | 0;
  };
  // Dense: refusals most of the time (full plans); sparse: mostly the one-peer path.
  for (const space of [6, 200]) {
    const { mesh, state } = meshOnFake(new Set([key(99)]));
    const entries = new Map<string, PeerEntry>();
    let refusals = 0, deletes = 0;
    for (let step = 0; step < 400; step++) {
      const name = `p${rand(8)}`;
      if (rand(4) === 0) {
        const byName = [...entries.values()].find((e) => e.name === name);
        if (byName === undefined) continue;
        entries.delete(byName.publicKey);
        deletes++;
        await mesh.apply({
          type: "delete",
          revision: step,
          kind: "node",
          name,
          publicKey: byName.publicKey,
        });
      } else {
        const e = node(
          name,
          key(rand(10)),
          `10.248.${rand(space)}.0/24`,
          `fd00:40:${rand(space)}::/64`,
        );
        // The manager's stream: a name has one key; a key one name.
        for (const [k, x] of entries) if (x.name === name || k === e.publicKey) entries.delete(k);
        entries.set(e.publicKey, e);
        await mesh.apply({ type: "upsert", revision: step, peer: e });
      }
      const { peers: want, refused } = desiredPeers([...entries.values()], self);
      refusals += refused.length;
      const have = state();
      assert.deepEqual(
        new Map([...have].sort()),
        new Map([...want].map(([k, e]) => [k, e.allowedIps.join(",")] as const).sort()),
        `after step ${step}`,
      );
      assert.deepEqual(mesh.peers.map((p) => p.publicKey).sort(), [...want.keys()].sort());
    }
    assert.ok(deletes > 30, `deletes ${deletes}`);
    assert.ok(space > 6 || refusals > 50, `refusals ${refusals} in the dense world`);
  }
});
