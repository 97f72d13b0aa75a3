import { writeFileAtomicSync, writeSecretFileSync } from "../../lib/fs.ts";
import assert from "node:assert/strict";
import {
  loadCredential,
  loadOrCreateKey,
  saveCredential,
  writeSecretFile,
} from "../../modes/node/key.ts";
import { publicKeyOf } from "../../lib/wireguard/mod.ts";

Deno.test("loadOrCreateKey() creates the key once, 0600, and returns the same key after", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const first = await loadOrCreateKey(`${dir}/keys`);
    const info = await Deno.stat(`${dir}/keys/private.key`);
    assert.equal(info.mode! & 0o777, 0o600);
    assert.equal(first.publicKey, await publicKeyOf(first.privateKey));
    const again = await loadOrCreateKey(`${dir}/keys`);
    assert.deepEqual(again, first);
    assert.deepEqual([...Deno.readDirSync(`${dir}/keys`)].map((e) => e.name), ["private.key"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a key file readable by others is refused, without printing the key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const k = await loadOrCreateKey(dir);
    await Deno.chmod(`${dir}/private.key`, 0o644);
    await assert.rejects(() => loadOrCreateKey(dir), (err: Error) => {
      assert.match(err.message, /readable by others \(mode 644\)/);
      assert.ok(!err.message.includes(k.privateKey));
      return true;
    });
    await Deno.chmod(`${dir}/private.key`, 0o600);
    await Deno.writeTextFile(`${dir}/private.key`, "not a key\n");
    await assert.rejects(() => loadOrCreateKey(dir), /expected base64 of 32 bytes/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeSecretFile() replaces atomically and the credential round-trips", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeSecretFile(`${dir}/f`, "one");
    await writeSecretFile(`${dir}/f`, "two");
    assert.equal(await Deno.readTextFile(`${dir}/f`), "two");
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["f"], "no temp file left");
    assert.equal(await loadCredential(dir), undefined);
    const cred = { name: "n1", credential: "c".repeat(40), clusterUrls: ["http://192.0.2.1:7443"] };
    await saveCredential(dir, cred);
    assert.deepEqual(await loadCredential(dir), cred);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomicSync() keeps the mode asked for, leaves no temp file, and a failed write changes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    writeFileAtomicSync(`${dir}/conf`, "a\n", 0o644);
    assert.equal(Deno.statSync(`${dir}/conf`).mode! & 0o777, 0o644);
    writeSecretFileSync(`${dir}/secret`, "s\n");
    assert.equal(Deno.statSync(`${dir}/secret`).mode! & 0o777, 0o600);
    // Into a directory that does not exist: an error, and nothing left behind.
    assert.throws(() => writeSecretFileSync(`${dir}/nosuch/secret`, "x"), Deno.errors.NotFound);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["conf", "secret"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
