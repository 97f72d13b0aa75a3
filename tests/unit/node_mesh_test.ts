import assert from "node:assert/strict";
import type { PeerEntry } from "../../lib/api/cluster_types.ts";
import { desiredPeers, Mesh, NAT_KEEPALIVE_S, planPeers } from "../../modes/node/mesh.ts";
import { endpointsToReport } from "../../modes/node/nat.ts";
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

/** A Mesh over `runner` on wgcni0, and the names of the node peers it primed. */
function meshOn(
  runner: RecordingRunner,
  podKeys: ReadonlySet<string> = new Set(),
  me: typeof self & { nat?: boolean } = self,
) {
  const primed: string[] = [];
  const mesh = new Mesh({
    wg: new WireGuardControl(runner, { backend: "userspace" }),
    iface: "wgcni0",
    self: me,
    logger: getLogger("test"),
    podKeys: () => podKeys,
    prime: (p) => primed.push(p.name),
    switchWaitMs: 2_000,
  });
  return { mesh, primed };
}

/** A Mesh on a recording runner, and the interface's peers as its `wg set`s left them. */
function meshOnFake(
  podKeys: ReadonlySet<string> = new Set(),
  me: typeof self & { nat?: boolean } = self,
) {
  const dump = [[KEYS[0], KEYS[0], "51820", "off"].join("\t")];
  const runner = new RecordingRunner((argv) =>
    argv[1] === "show" ? { stdout: dump.join("\n") + "\n" } : undefined
  );
  const { mesh, primed } = meshOn(runner, podKeys, me);
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
  return { runner, mesh, primed, state, dump };
}

/** A distinct valid public key per number. */
const key = (i: number) => {
  const bytes = new Uint8Array(32).fill(7);
  bytes[0] = i & 255;
  bytes[1] = i >> 8;
  return btoa(String.fromCharCode(...bytes));
};

/** `count` nodes with one /32 and one /128 each, keys from `key(base + i)`. */
function manyNodes(count: number, base = 1000): PeerEntry[] {
  return Array.from({ length: count }, (_, i) =>
    node(
      `n${i}`,
      key(base + i),
      `10.246.${i >> 8}.${i & 255}/32`,
      `fd00:30::${i.toString(16)}/128`,
    ));
}

/** A seeded generator of whole numbers below `n` (mulberry32), so random tests repeat. */
function seededRandom(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32 * n) | 0;
  };
}

/** The watch event that deletes node `name` with `publicKey`. */
const deleteNode = (revision: number, name: string, publicKey: string) =>
  ({ type: "delete", revision, kind: "node", name, publicKey }) as const;

const setLine = (e: PeerEntry) =>
  `wg set wgcni0 peer ${e.publicKey} endpoint ${e.endpoint} allowed-ips ${e.allowedIps.join(",")}`;
const removeLine = (publicKey: string) => `wg set wgcni0 peer ${publicKey} remove`;

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

Deno.test("desiredPeers() refuses a low-order key and an endpoint no other machine has", () => {
  const zeroKey = {
    ...node(
      "x",
      "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
      "10.244.5.0/24",
      "fd00:10:244:5::/64",
    ),
  };
  const loop = {
    ...node("y", KEYS[3], "10.244.6.0/24", "fd00:10:244:6::/64"),
    endpoint: "127.0.0.1:51820",
  };
  const linkLocal = {
    ...node("z", KEYS[4], "10.244.7.0/24", "fd00:10:244:7::/64"),
    endpoint: "[fe80::1]:51820",
  };
  const { peers, refused } = desiredPeers([b, zeroKey, loop, linkLocal], self);
  assert.deepEqual([...peers.keys()], [KEYS[1]]);
  assert.deepEqual(refused.map((r) => r.name).sort(), ["x", "y", "z"]);
  assert.match(refused.find((r) => r.name === "x")?.reason ?? "", /not a usable Curve25519 key/);
  assert.match(refused.find((r) => r.name === "y")?.reason ?? "", /loopback range/);
  assert.match(refused.find((r) => r.name === "z")?.reason ?? "", /link-local/);
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
  const { runner, mesh, primed } = meshOnFake();
  await mesh.apply({ type: "snapshot", revision: 5, peers: [b] });
  assert.deepEqual(runner.lines, ["wg show wgcni0 dump", setLine(b)]);
  runner.commands.length = 0;
  await mesh.apply({ type: "upsert", revision: 6, peer: c });
  assert.deepEqual(runner.lines, [setLine(c)]);
  runner.commands.length = 0;
  await mesh.apply(deleteNode(7, "b", b.publicKey));
  assert.deepEqual(runner.lines, [removeLine(b.publicKey)]);
  assert.equal(mesh.revision, 7);
  assert.equal(mesh.applied, 3);
  assert.deepEqual(primed, ["b", "c"], "each new node peer is primed once");
  await mesh.apply({ type: "upsert", revision: 8, peer: { ...c, endpoint: "192.0.2.99:51820" } });
  assert.deepEqual(primed, ["b", "c"], "a changed peer is not primed again");
});

Deno.test("a snapshot with many changes is applied in batched `wg set`s", async () => {
  const { runner, mesh, primed } = meshOnFake();
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

Deno.test("one delta with thousands of peers present is one `wg set` touching only that peer", async () => {
  const { runner, mesh } = meshOnFake();
  const many = manyNodes(2000);
  await mesh.apply({ type: "snapshot", revision: 1, peers: many });
  runner.commands.length = 0;
  const fresh = node("fresh", KEYS[3], "10.247.0.0/24", "fd00:31::/64");
  await mesh.apply({ type: "upsert", revision: 2, peer: fresh });
  assert.deepEqual(runner.lines, [setLine(fresh)]);
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
  await mesh.apply(deleteNode(5, "n7", many[7]!.publicKey));
  assert.deepEqual(runner.lines, [removeLine(many[7]!.publicKey)]);
  assert.equal(mesh.peers.length, 2000);
});

Deno.test("deltas, overlaps and refusals included, leave the interface as the full plan says", async () => {
  // A small world so that names, keys and subnets collide often.
  const rand = seededRandom(42);
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

/**
 * The plan over all entries at once, written plainly as a reference: in
 * order of name, kind and key, an entry is a peer unless it is this node or
 * one of its ranges is invalid or overlaps this node's subnets, another of
 * its own, or an earlier peer's.
 */
function referencePeers(entries: Iterable<PeerEntry>): { peers: string[]; refused: string[] } {
  const range = (cidr: string) => {
    const [addr, len] = cidr.split("/") as [string, string];
    const v6 = addr.includes(":");
    let n = 0n;
    if (v6) {
      const [head, tail = ""] = addr.split("::") as [string, string?];
      const h = head ? head.split(":") : [], t = tail ? tail.split(":") : [];
      const groups = [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
      for (const g of groups) n = (n << 16n) | BigInt(parseInt(g, 16));
    } else {
      for (const o of addr.split(".")) n = (n << 8n) | BigInt(Number(o));
    }
    const size = 1n << BigInt((v6 ? 128 : 32) - Number(len));
    const lo = n - (n % size);
    return { v6, lo, hi: lo + size - 1n, valid: lo === n };
  };
  type Range = ReturnType<typeof range>;
  const meets = (a: Range, b: Range) => a.v6 === b.v6 && a.lo <= b.hi && b.lo <= a.hi;
  const own = self.subnets.map(range);
  const order = (e: PeerEntry) => `${e.name}\0${e.kind}\0${e.publicKey}`;
  const sorted = [...entries].sort((a, b) => order(a) < order(b) ? -1 : 1);
  const taken: Range[] = [];
  const peers: string[] = [], refused: string[] = [];
  for (const e of sorted) {
    if (e.publicKey === self.publicKey || (e.kind === "node" && e.name === self.name)) continue;
    const mine = e.allowedIps.map(range);
    const ok = mine.every((r, i) =>
      r.valid && !own.some((o) => meets(o, r)) && !taken.some((t) => meets(t, r)) &&
      !mine.slice(0, i).some((m) => meets(m, r))
    );
    if (ok) {
      peers.push(e.publicKey);
      taken.push(...mine);
    } else {
      refused.push(e.publicKey);
    }
  }
  return { peers: peers.sort(), refused: refused.sort() };
}

Deno.test("with refusals standing, a delta among thousands of peers is still one operation for that peer", async () => {
  const { runner, mesh } = meshOnFake();
  const many = manyNodes(3000);
  // A later name on n5's address, and one inside this node's subnet: both
  // refused, and they stay so through unrelated deltas.
  const dup = node("zz-dup", KEYS[3], "10.246.0.5/32", "fd00:32::/64");
  const intoMine = node("yy-mine", KEYS[4], "10.244.0.7/32", "fd00:33::/64");
  await mesh.apply({ type: "snapshot", revision: 1, peers: [...many, dup, intoMine] });
  assert.deepEqual(mesh.refused.map((r) => r.name), ["yy-mine", "zz-dup"]);
  runner.commands.length = 0;
  const fresh = node("fresh", key(9000), "10.247.0.0/24", "fd00:31::/64");
  await mesh.apply({ type: "upsert", revision: 2, peer: fresh });
  assert.deepEqual(runner.lines, [setLine(fresh)]);
  runner.commands.length = 0;
  const moved = { ...fresh, endpoint: "192.0.2.7:1" };
  await mesh.apply({ type: "upsert", revision: 3, peer: moved });
  assert.deepEqual(runner.lines, [setLine(moved)]);
  runner.commands.length = 0;
  const n9 = many[9]!.publicKey;
  await mesh.apply({ type: "delete", revision: 4, kind: "node", name: "n9", publicKey: n9 });
  assert.deepEqual(runner.lines, [removeLine(n9)]);
  runner.commands.length = 0;
  // A refused entry changing while still refused is no operation.
  await mesh.apply({ type: "upsert", revision: 5, peer: { ...dup, endpoint: "192.0.2.8:1" } });
  assert.deepEqual(runner.lines, []);
  assert.equal(mesh.applied, 3000 + 3);
  assert.equal(mesh.peers.length, 3000);
  assert.deepEqual(mesh.refused.map((r) => r.name), ["yy-mine", "zz-dup"]);
});

Deno.test("incremental refusals: overlaps and this node are refused and reported without touching the interface", async () => {
  const { runner, mesh } = meshOnFake();
  await mesh.apply({ type: "snapshot", revision: 1, peers: [...manyNodes(500), b] });
  runner.commands.length = 0;
  const clash = node("x", KEYS[3], "10.244.1.0/25", "fd00:50::/64");
  await mesh.apply({ type: "upsert", revision: 2, peer: clash });
  const intoMine = node("y", KEYS[4], "10.244.0.128/25", "fd00:51::/64");
  await mesh.apply({ type: "upsert", revision: 3, peer: intoMine });
  const selfOverlap = node("w", key(9001), "10.250.0.0/16", "10.250.1.0/24");
  await mesh.apply({ type: "upsert", revision: 4, peer: selfOverlap });
  const invalid = node("v", key(9002), "10.251.0.1/24", "fd00:52::/64");
  await mesh.apply({ type: "upsert", revision: 5, peer: invalid });
  // This node, by name or by key.
  const byName = node("a", key(9003), "10.252.0.0/24", "fd00:53::/64");
  await mesh.apply({ type: "upsert", revision: 6, peer: byName });
  const byKey = node("self-key", KEYS[0], "10.253.0.0/24", "fd00:54::/64");
  await mesh.apply({ type: "upsert", revision: 7, peer: byKey });
  assert.deepEqual(runner.lines, [], "nothing refused reaches the interface");
  const refused = mesh.refused;
  assert.deepEqual(refused.map((r) => r.name), ["v", "w", "x", "y"]);
  assert.match(refused[0]!.reason, /allowed IP 10.251.0.1\/24 is invalid/);
  assert.deepEqual(refused.slice(1).map((r) => r.reason), [
    "allowed IP 10.250.1.0/24 overlaps 10.250.0.0/16 of w",
    "allowed IP 10.244.1.0/25 overlaps 10.244.1.0/24 of b",
    "allowed IP 10.244.0.128/25 overlaps this node's subnet 10.244.0.0/24",
  ]);
  assert.ok(!mesh.peers.some((p) => p.name === "a" || p.publicKey === KEYS[0]));
  // b goes: x, refused because of b, is let in in the same step.
  await mesh.apply(deleteNode(8, "b", b.publicKey));
  assert.deepEqual(runner.lines, [setLine(clash), removeLine(b.publicKey)]);
  runner.commands.length = 0;
  // b comes back: earlier in name order, it displaces x.
  await mesh.apply({ type: "upsert", revision: 9, peer: b });
  assert.deepEqual(runner.lines, [setLine(b), removeLine(clash.publicKey)]);
  assert.deepEqual(mesh.refused.map((r) => r.name), ["v", "w", "x", "y"]);
  assert.deepEqual(
    mesh.refused.map((r) => r.publicKey).sort(),
    referencePeers([...manyNodes(500), b, clash, intoMine, selfOverlap, invalid, byName, byKey])
      .refused,
  );
});

Deno.test("incremental replacement: a node's new key replaces the old, and frees what the old range refused", async () => {
  const { runner, mesh, primed } = meshOnFake();
  const inside = node("z", KEYS[3], "10.244.1.128/25", "fd00:60::/64"); // inside b's /24
  await mesh.apply({ type: "snapshot", revision: 1, peers: [...manyNodes(500), b, inside] });
  assert.deepEqual(mesh.refused.map((r) => r.name), ["z"]);
  runner.commands.length = 0;
  primed.length = 0;
  // b again under another key and in another range: the new key is set, z
  // (no longer overlapped) is let in, and the old key removed last.
  const moved = { ...b, publicKey: KEYS[4], allowedIps: ["10.244.9.0/24", "fd00:10:244:9::/64"] };
  await mesh.apply({ type: "upsert", revision: 2, peer: moved });
  assert.deepEqual(runner.lines, [setLine(moved), setLine(inside), removeLine(b.publicKey)]);
  assert.equal(mesh.refused.length, 0);
  assert.deepEqual(primed.sort(), ["b", "z"], "the new key and the freed node are primed");
  assert.ok(!mesh.peers.some((p) => p.publicKey === b.publicKey));
  assert.equal(mesh.peers.length, 502);
  // Deleting the old key (already replaced) is no operation.
  runner.commands.length = 0;
  await mesh.apply(deleteNode(3, "b", b.publicKey));
  assert.deepEqual(runner.lines, []);
  // The same name under yet another key, overlapping z's range this time:
  // "b" is earlier than "z", so z gives way again.
  const back = { ...b, publicKey: key(9004) };
  await mesh.apply({ type: "upsert", revision: 4, peer: back });
  assert.deepEqual(runner.lines, [
    setLine(back),
    removeLine(KEYS[4]),
    removeLine(KEYS[3]),
  ]);
  assert.deepEqual(mesh.refused.map((r) => r.name), ["z"]);
});

Deno.test("an earlier name displaces many later peers, and gives them back when it goes", async () => {
  const { runner, mesh, state } = meshOnFake();
  const many = manyNodes(300);
  await mesh.apply({ type: "snapshot", revision: 1, peers: many });
  state();
  let seen = runner.lines.length;
  const wide = node("a-wide", KEYS[3], "10.246.0.0/24", "fd00:70::/64"); // n0 to n255's /32s
  await mesh.apply({ type: "upsert", revision: 2, peer: wide });
  const displaced = runner.lines.slice(seen);
  assert.equal(displaced[0], setLine(wide));
  assert.deepEqual(
    displaced.slice(1).sort(),
    many.slice(0, 256).map((e) => removeLine(e.publicKey)).sort(),
  );
  assert.equal(mesh.refused.length, 256);
  assert.deepEqual([...state().keys()].sort(), referencePeers([...many, wide]).peers);
  seen = runner.lines.length;
  await mesh.apply(deleteNode(3, "a-wide", KEYS[3]));
  const restored = runner.lines.slice(seen);
  assert.equal(restored.length, 257);
  assert.equal(restored.at(-1), removeLine(KEYS[3]));
  assert.equal(mesh.refused.length, 0);
  assert.deepEqual([...state().keys()].sort(), many.map((e) => e.publicKey).sort());
});

Deno.test("after a failed operation the next event plans against the interface", async () => {
  const listed = new Map<string, { endpoint: string; allowed: string }>();
  let failNext = false;
  const runner = new RecordingRunner((argv) => {
    if (argv[1] === "show") {
      const rows = [[KEYS[0], KEYS[0], "51820", "off"].join("\t")];
      for (const [k, p] of listed) {
        rows.push([k, "(none)", p.endpoint, p.allowed, "0", "0", "0", "off"].join("\t"));
      }
      return { stdout: rows.join("\n") + "\n" };
    }
    if (failNext) {
      failNext = false;
      return { code: 1, stderr: "Unable to modify interface" };
    }
    const k = argv[argv.indexOf("peer") + 1]!;
    if (argv.at(-1) === "remove") listed.delete(k);
    else {
      const at = (flag: string) => argv[argv.indexOf(flag) + 1]!;
      listed.set(k, { endpoint: at("endpoint"), allowed: at("allowed-ips") });
    }
    return undefined;
  });
  const { mesh } = meshOn(runner);
  await mesh.apply({ type: "snapshot", revision: 1, peers: [b] });
  failNext = true;
  await assert.rejects(mesh.apply({ type: "upsert", revision: 2, peer: c }));
  assert.equal(mesh.revision, 1);
  assert.ok(!listed.has(c.publicKey));
  // The stream resumes from revision 1: the same event comes again.
  runner.commands.length = 0;
  await mesh.apply({ type: "upsert", revision: 2, peer: c });
  assert.deepEqual(runner.lines, ["wg show wgcni0 dump", setLine(c)]);
  assert.ok(listed.has(c.publicKey));
  runner.commands.length = 0;
  await mesh.apply(deleteNode(3, "b", b.publicKey));
  assert.deepEqual(runner.lines, [removeLine(b.publicKey)], "back to one operation per delta");
});

Deno.test("random event streams, snapshots included, match a plain plan over all entries", async () => {
  const rand = seededRandom(7);
  for (const space of [4, 12, 64]) {
    const { mesh, state } = meshOnFake(new Set([key(99)]));
    const entries = new Map<string, PeerEntry>();
    const nameOf = (e: PeerEntry) => `${e.kind}/${e.name}`;
    for (let step = 0; step < 500; step++) {
      // Nodes and clients, sharing names sometimes, and now and then this node's name.
      const kind = rand(3) === 0 ? "client" : "node";
      const name = rand(20) === 0 ? "a" : `p${rand(10)}`;
      const roll = rand(20);
      if (roll === 0) {
        await mesh.apply({ type: "snapshot", revision: step, peers: [...entries.values()] });
      } else if (roll < 6) {
        const found = [...entries.values()].find((e) => e.kind === kind && e.name === name);
        if (found === undefined) continue;
        entries.delete(found.publicKey);
        await mesh.apply({
          type: "delete",
          revision: step,
          kind,
          name,
          publicKey: found.publicKey,
        });
      } else {
        // Prefixes of several lengths, so ranges nest as well as collide;
        // now and then an invalid one, or the same range twice.
        const len = 22 + rand(4);
        const third = rand(space);
        const v4 = rand(25) === 0
          ? `10.248.${third}.1/24`
          : len === 25
          ? `10.248.${third}.${rand(2) * 128}/25`
          : `10.248.${third - (third % 2 ** (24 - len))}.0/${len}`;
        const v6 = `fd00:40:${rand(space)}::/64`;
        const e: PeerEntry = {
          ...node(name, key(rand(14)), v4, v6),
          kind,
          allowedIps: rand(10) === 0 ? [v4, v4] : [v4, v6],
        };
        // The manager's stream: a kind and name has one key; a key one entry.
        for (const [k, x] of entries) {
          if (nameOf(x) === nameOf(e) || k === e.publicKey) entries.delete(k);
        }
        entries.set(e.publicKey, e);
        await mesh.apply({ type: "upsert", revision: step, peer: e });
      }
      const want = referencePeers(entries.values());
      const full = desiredPeers([...entries.values()], self);
      assert.deepEqual([...full.peers.keys()].sort(), want.peers, `desiredPeers at step ${step}`);
      assert.deepEqual([...state().keys()].sort(), want.peers, `interface at step ${step}`);
      assert.deepEqual(mesh.peers.map((p) => p.publicKey).sort(), want.peers);
      assert.deepEqual(
        mesh.refused.map((r) => r.publicKey).sort(),
        want.refused,
        `refused at step ${step}`,
      );
    }
  }
});

Deno.test("a node not behind NAT keeps the endpoint a NAT'd peer's handshakes came from", () => {
  const natted: PeerEntry = { ...b, endpoint: "198.51.100.7:51820", nat: true };
  const desired = new Map([[natted.publicKey, natted]]);
  const roamed = {
    publicKey: b.publicKey,
    allowedIps: b.allowedIps,
    endpoint: "198.51.100.7:4711",
  };
  assert.deepEqual(planPeers(desired, [roamed], new Set()), []);
  // No endpoint yet: the cluster's is set.
  const fresh = planPeers(desired, [{ ...roamed, endpoint: null }], new Set());
  assert.deepEqual(fresh.map((o) => o.op === "set" && o.peer.endpoint), ["198.51.100.7:51820"]);
  // Other allowed IPs: set, without moving the endpoint.
  const moved = planPeers(desired, [{ ...roamed, allowedIps: ["10.244.9.0/24"] }], new Set());
  assert.equal(moved.length, 1);
  assert.equal(moved[0]!.op === "set" && moved[0]!.peer.endpoint, undefined);
  assert.equal(moved[0]!.op === "set" && moved[0]!.peer.persistentKeepalive, undefined);
});

Deno.test("a node behind NAT sends node peers keep-alives and follows the cluster's endpoints", () => {
  const nat = { nat: true };
  const other: PeerEntry = { ...c, endpoint: "198.51.100.8:51820", nat: true };
  const client: PeerEntry = {
    kind: "client",
    name: "laptop",
    publicKey: KEYS[3],
    allowedIps: ["10.250.0.2/32"],
  };
  const desired = new Map([[b.publicKey, b], [other.publicKey, other], [client.publicKey, client]]);
  const current = [
    { ...{ publicKey: b.publicKey, allowedIps: b.allowedIps, endpoint: b.endpoint! } },
    { publicKey: other.publicKey, allowedIps: other.allowedIps, endpoint: "198.51.100.8:999" },
    { publicKey: client.publicKey, allowedIps: client.allowedIps, endpoint: null },
  ];
  const ops = planPeers(desired, current, new Set(), nat);
  assert.deepEqual(
    ops.map((o) => o.op === "set" && [o.name, o.peer.endpoint, o.peer.persistentKeepalive]),
    [["b", b.endpoint, NAT_KEEPALIVE_S], ["c", "198.51.100.8:51820", NAT_KEEPALIVE_S]],
  );
  // With the keep-alive there and the endpoints the cluster's, nothing to do.
  const done = current.map((p) => ({
    ...p,
    endpoint: desired.get(p.publicKey)!.endpoint ?? null,
    persistentKeepalive: p.publicKey === client.publicKey ? null : NAT_KEEPALIVE_S,
  }));
  assert.deepEqual(planPeers(desired, done, new Set(), nat), []);
});

Deno.test("Mesh deltas: a NAT'd peer's new endpoint moves no peer on a node not behind NAT", async () => {
  const natted: PeerEntry = { ...b, endpoint: "198.51.100.7:51820", nat: true };
  const lines: string[][] = [];
  // Not behind NAT, then behind NAT itself (the node takes it, with the keep-alive).
  for (const me of [self, { ...self, nat: true }]) {
    const { runner, mesh } = meshOnFake(new Set(), me);
    await mesh.apply({ type: "snapshot", revision: 1, peers: [natted] });
    runner.commands.length = 0;
    await mesh.apply({
      type: "upsert",
      revision: 2,
      peer: { ...natted, endpoint: "198.51.100.7:4711" },
    });
    lines.push(runner.lines);
  }
  assert.deepEqual(lines[0], []);
  assert.equal(lines[1]!.length, 1);
  assert.match(lines[1]![0]!, /endpoint 198\.51\.100\.7:4711/);
  assert.match(lines[1]![0]!, new RegExp(`persistent-keepalive ${NAT_KEEPALIVE_S}`));
});

Deno.test("endpointsToReport(): fresh handshakes of NAT'd nodes seen elsewhere than the cluster says, once", () => {
  const now = 1_700_000_000;
  const natted: PeerEntry = { ...b, endpoint: "198.51.100.7:51820", nat: true };
  const peerState = (key: string, endpoint: string | null, hs: number) => ({
    publicKey: key,
    endpoint,
    latestHandshake: hs,
    hasPresharedKey: false,
    allowedIps: [],
    rxBytes: 0,
    txBytes: 0,
    persistentKeepalive: null,
  });
  const peers = [natted, c];
  const state = {
    peers: [
      peerState(b.publicKey, "198.51.100.7:4711", now - 5),
      peerState(c.publicKey, "192.0.2.1:1", now - 5),
    ],
  };
  assert.deepEqual(endpointsToReport(peers, state, new Map(), now), [
    { name: "b", endpoint: "198.51.100.7:4711" },
  ]);
  // Reported already, the cluster's own, stale, or never: nothing.
  assert.deepEqual(endpointsToReport(peers, state, new Map([["b", "198.51.100.7:4711"]]), now), []);
  const same = { peers: [peerState(b.publicKey, "198.51.100.7:51820", now - 5)] };
  assert.deepEqual(endpointsToReport(peers, same, new Map(), now), []);
  const stale = { peers: [peerState(b.publicKey, "198.51.100.7:4711", now - 600)] };
  assert.deepEqual(endpointsToReport(peers, stale, new Map(), now), []);
  const never = { peers: [peerState(b.publicKey, "198.51.100.7:4711", 0)] };
  assert.deepEqual(endpointsToReport(peers, never, new Map(), now), []);
});

Deno.test("a next key: held with no allowed IPs until its moment and the first handshake under it, then given them before the old key goes", async () => {
  const { runner, mesh, primed, state, dump } = meshOnFake();
  let mark = 0;
  await mesh.apply({ type: "snapshot", revision: 1, peers: [b, c] });
  primed.length = 0;
  mark = runner.lines.length;
  state();
  const switchAt = Date.now() + 150;
  await mesh.apply({
    type: "upsert",
    revision: 2,
    peer: { ...b, nextKey: { publicKey: KEYS[3], switchAt } },
  });
  assert.deepEqual(runner.lines.slice(mark), [
    `wg set wgcni0 peer ${KEYS[3]} endpoint ${b.endpoint} allowed-ips `,
  ]);
  assert.deepEqual([...mesh.pendingKeys], [KEYS[3]]);
  assert.deepEqual(mesh.peers.map((p) => p.publicKey).sort(), [KEYS[1], KEYS[2]].sort());
  assert.deepEqual(primed, [], "a next key is no new node");
  // A resync keeps it.
  await mesh.apply({
    type: "snapshot",
    revision: 3,
    peers: [{ ...b, nextKey: { publicKey: KEYS[3], switchAt } }, c],
  });
  assert.ok(state().has(KEYS[3]));
  mark = runner.lines.length;
  // Past its moment, it waits for the rotating node's first handshake under the next key.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(runner.lines.slice(mark).filter((l) => l.startsWith("wg set")), []);
  dump.push(
    [KEYS[3], "(none)", b.endpoint, "(none)", String(Date.now() / 1000 | 0), "0", "0", "off"].join(
      "\t",
    ),
  );
  await new Promise((r) => setTimeout(r, 100));
  mark = runner.lines.length - 2;
  assert.deepEqual(runner.lines.slice(mark), [
    setLine({ ...b, publicKey: KEYS[3] }),
    removeLine(KEYS[1]),
  ]);
  assert.deepEqual(mesh.peers.map((p) => p.publicKey).sort(), [KEYS[3], KEYS[2]].sort());
  assert.deepEqual(mesh.pendingKeys.size, 0);
  // The manager's own word of the switch changes nothing more.
  mark = runner.lines.length;
  await mesh.apply({ type: "upsert", revision: 4, peer: { ...b, publicKey: KEYS[3] } });
  assert.deepEqual(runner.lines.slice(mark), []);
  // Removing the node removes its one key.
  await mesh.apply(deleteNode(5, "b", KEYS[3]));
  assert.deepEqual(runner.lines.slice(mark), [removeLine(KEYS[3])]);
  mesh.close();
});

Deno.test("a next key whose moment has passed is the key; a node removed while it rotates loses both keys", async () => {
  const { runner, mesh, state } = meshOnFake();
  let mark = 0;
  await mesh.apply({
    type: "snapshot",
    revision: 1,
    peers: [{ ...b, nextKey: { publicKey: KEYS[3], switchAt: Date.now() - 1 } }],
  });
  assert.deepEqual([...state().keys()].filter((k) => k !== KEYS[0]), [KEYS[3]]);
  await mesh.apply({
    type: "upsert",
    revision: 2,
    peer: { ...c, nextKey: { publicKey: KEYS[4], switchAt: Date.now() + 60_000 } },
  });
  assert.ok(state().has(KEYS[4]) && state().has(KEYS[2]));
  mark = runner.lines.length;
  await mesh.apply(deleteNode(3, "c", KEYS[2]));
  assert.deepEqual(
    runner.lines.slice(mark).sort(),
    [removeLine(KEYS[2]), removeLine(KEYS[4])].sort(),
  );
  assert.equal(mesh.pendingKeys.size, 0);
  mesh.close();
});

Deno.test("a key change from the cluster sets the new key with the allowed IPs, then removes the old", async () => {
  const { runner, mesh } = meshOnFake();
  let mark = 0;
  await mesh.apply({ type: "snapshot", revision: 1, peers: [b] });
  mark = runner.lines.length;
  await mesh.apply({ type: "upsert", revision: 2, peer: { ...b, publicKey: KEYS[3] } });
  assert.deepEqual(runner.lines.slice(mark), [
    setLine({ ...b, publicKey: KEYS[3] }),
    removeLine(KEYS[1]),
  ]);
});

Deno.test("a node behind NAT holds a next key without a keep-alive (it would start a handshake)", async () => {
  const { runner, mesh } = meshOnFake(new Set(), { ...self, nat: true });
  await mesh.apply({
    type: "snapshot",
    revision: 1,
    peers: [{ ...b, nextKey: { publicKey: KEYS[3], switchAt: Date.now() + 60_000 } }],
  });
  const set = runner.lines.filter((l) => l.startsWith("wg set"));
  const pending = set.flatMap((l) => l.split(" peer ")).find((p) => p.startsWith(KEYS[3]));
  const current = set.flatMap((l) => l.split(" peer ")).find((p) => p.startsWith(KEYS[1]));
  assert.ok(pending && !pending.includes("persistent-keepalive"), String(pending));
  assert.match(current ?? "", new RegExp(`persistent-keepalive ${NAT_KEEPALIVE_S}`));
  mesh.close();
});

Deno.test("an endpoint chosen for a peer (a relay) goes with it to its new key", async () => {
  const { runner, mesh } = meshOnFake(new Set(), { ...self, nat: true });
  await mesh.apply({ type: "snapshot", revision: 1, peers: [b] });
  await mesh.choose(KEYS[1], "192.0.2.1:7601");
  const mark = runner.lines.length;
  await mesh.apply({ type: "upsert", revision: 2, peer: { ...b, publicKey: KEYS[3] } });
  assert.equal(mesh.chosen(KEYS[3]), "192.0.2.1:7601");
  assert.equal(mesh.chosen(KEYS[1]), undefined);
  assert.match(
    runner.lines.slice(mark).join("\n"),
    new RegExp(`peer ${KEYS[3].replaceAll("+", "\\+")} endpoint 192\\.0\\.2\\.1:7601`),
  );
});
