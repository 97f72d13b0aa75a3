/**
 * The node's key rotation on its own: the order of its steps, on a scripted
 * clock, against a real key directory; what a rotation cut short leaves and
 * how a start settles it. The real interfaces are in
 * tests/e2e/node_rotation_test.ts.
 */
import assert from "node:assert/strict";
import { ConflictError } from "../../lib/errors.ts";
import { getLogger } from "../../lib/log.ts";
import type { NextKey } from "../../lib/domain/cluster.ts";
import { loadNextKey, loadOrCreateKey, type NodeKey, saveNextKey } from "../../modes/node/key.ts";
import { KeyRotation, settleRotation } from "../../modes/node/rotation.ts";
import { generateKeyPair } from "../../lib/wireguard/mod.ts";

const T0 = 1_700_000_000_000;

async function withKeyDir(fn: (dir: string, key: NodeKey) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir, await loadOrCreateKey(dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A rotation whose every step is recorded, on a clock that sleeps by moving on. */
function scripted(
  dir: string,
  key: NodeKey,
  overrides: { announce?: () => Promise<void>; setPrivateKey?: () => Promise<void> } = {},
) {
  const steps: string[] = [];
  // Real time, from T0 on; a sleep moves it on at once.
  let offset = T0 - Date.now();
  let announced: NextKey | undefined;
  const rotation = new KeyRotation(key, {
    keyDir: dir,
    logger: getLogger("test"),
    leadMs: 5_000,
    now: () => Date.now() + offset,
    sleep: (ms) => {
      offset += ms;
      steps.push(`sleep ${ms}`);
      return Promise.resolve();
    },
    setPrivateKey: overrides.setPrivateKey ?? (async (privateKey) => {
      const { publicKeyOf } = await import("../../lib/wireguard/mod.ts");
      steps.push(`interface ${await publicKeyOf(privateKey) === announced?.publicKey}`);
    }),
    announce: overrides.announce ?? (async (next) => {
      announced = next;
      steps.push(`announce ${(await loadNextKey(dir))?.publicKey === next.publicKey}`);
    }),
    register: (publicKey) => {
      steps.push(`register ${publicKey === announced?.publicKey}`);
      return Promise.resolve();
    },
    nodes: () => [],
    movePods: (from, to) => {
      const which = (k: string) =>
        k === key.publicKey ? "old" : k === announced?.publicKey ? "new" : "other";
      steps.push(`pods ${which(from)} → ${which(to)}`);
      return Promise.resolve(2);
    },
    changed: (k) => {
      steps.push(`changed ${k.publicKey === announced?.publicKey}`);
      return 1;
    },
  });
  return { rotation, steps, announced: () => announced };
}

Deno.test("a rotation: the next key is on disk before it is announced, switched at its moment, then registered", async () => {
  await withKeyDir(async (dir, key) => {
    const { rotation, steps, announced } = scripted(dir, key);
    const r = await rotation.rotate();
    // The interface and the pods move together, then the rest.
    assert.deepEqual([...steps.slice(0, 2), ...steps.slice(2, 4).sort(), ...steps.slice(4)], [
      "announce true",
      steps[1]!,
      "interface true",
      "pods old → new",
      "changed true",
      "register true",
    ]);
    assert.match(steps[1]!, /^sleep \d+$/);
    const { switchAt, ...rest } = r;
    assert.deepEqual(rest, {
      from: key.publicKey,
      to: announced()!.publicKey,
      pods: 2,
      workloads: 1,
    });
    assert.equal(announced()!.switchAt, switchAt);
    assert.ok(switchAt >= T0 + 5_000 && switchAt < T0 + 6_000, `switch at T0 + ${switchAt - T0}`);
    assert.equal(rotation.key.publicKey, r.to);
    assert.equal((await loadOrCreateKey(dir)).publicKey, r.to, "the key file is the new key");
    assert.equal(await loadNextKey(dir), undefined);
    assert.equal(rotation.under, undefined);
  });
});

Deno.test("a second rotation while one is under way is refused; a failed announcement changes nothing", async () => {
  await withKeyDir(async (dir, key) => {
    let release!: () => void;
    const held = new Promise<void>((r) => release = r);
    const { rotation } = scripted(dir, key, { announce: () => held });
    const first = rotation.rotate();
    await new Promise((r) => setTimeout(r, 10));
    await assert.rejects(
      rotation.rotate(),
      (err: Error) =>
        err instanceof ConflictError && /a rotation to \S+ is under way/.test(err.message),
    );
    release();
    await first;
  });
  await withKeyDir(async (dir, key) => {
    const { rotation } = scripted(dir, key, {
      announce: () => Promise.reject(new Error("the manager is gone")),
    });
    await assert.rejects(rotation.rotate(), /the manager is gone/);
    assert.equal(await loadNextKey(dir), undefined, "the next key file went");
    assert.equal(rotation.key.publicKey, key.publicKey);
    assert.equal((await loadOrCreateKey(dir)).publicKey, key.publicKey);
    assert.equal(rotation.under, undefined);
  });
});

Deno.test("an interface that refuses the new key keeps the old one, and so do the pods", async () => {
  await withKeyDir(async (dir, key) => {
    const { rotation, steps } = scripted(dir, key, {
      setPrivateKey: () => Promise.reject(new Error("wg set failed")),
    });
    await assert.rejects(rotation.rotate(), /wg set failed/);
    assert.deepEqual(steps.slice(2), [
      "pods old → new",
      "pods new → old",
    ]);
    assert.equal(rotation.key.publicKey, key.publicKey);
    assert.equal((await loadOrCreateKey(dir)).publicKey, key.publicKey);
    assert.equal(rotation.under, undefined);
  });
});

Deno.test("a start settles a rotation cut short from the next key file and what the cluster holds", async (t) => {
  const cases: [string, (next: NodeKey) => NextKey | undefined, string][] = [
    [
      "announced, its moment passed: switched",
      (n) => ({ publicKey: n.publicKey, switchAt: T0 - 1 }),
      "switched",
    ],
    [
      "announced, its moment ahead: resumed",
      (n) => ({ publicKey: n.publicKey, switchAt: T0 + 9 }),
      "resume",
    ],
    ["not announced: the file goes", () => undefined, "dropped"],
    [
      "another key announced: the file goes",
      () => ({ publicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", switchAt: T0 + 9 }),
      "dropped",
    ],
  ];
  for (const [what, announced, outcome] of cases) {
    await t.step(what, async () => {
      await withKeyDir(async (dir, key) => {
        const next = await generateKeyPair();
        await saveNextKey(dir, next.privateKey);
        const nextKey = announced(next);
        const s = await settleRotation(dir, key, {
          publicKey: key.publicKey,
          ...(nextKey ? { nextKey } : {}),
        }, T0);
        const file = await loadNextKey(dir);
        const current = (await loadOrCreateKey(dir)).publicKey;
        if (outcome === "switched") {
          assert.deepEqual([s.switched, s.key.publicKey, current, file], [
            true,
            next.publicKey,
            next.publicKey,
            undefined,
          ]);
        } else if (outcome === "resume") {
          assert.deepEqual([s.switched, s.key.publicKey, current], [
            false,
            key.publicKey,
            key.publicKey,
          ]);
          assert.deepEqual(s.resume, { next, switchAt: T0 + 9 });
          assert.equal(file?.publicKey, next.publicKey, "the file stays until the switch");
        } else {
          assert.deepEqual([s.switched, s.key.publicKey, current, file, s.resume], [
            false,
            key.publicKey,
            key.publicKey,
            undefined,
            undefined,
          ]);
        }
      });
    });
  }
});

Deno.test("--key-lifetime rotates when the key's lifetime is up, and again a lifetime later", async () => {
  await withKeyDir(async (dir, key) => {
    const { rotation, steps } = scripted(dir, key);
    const stop = new AbortController();
    const run = rotation.run(20, T0, stop.signal);
    for (let i = 0; i < 200 && steps.filter((s) => s.startsWith("register")).length < 2; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    stop.abort();
    await run;
    assert.ok(steps.filter((s) => s === "register true").length >= 2, steps.join(", "));
  });
});
