import assert from "node:assert/strict";
import { generateKeyPair, isKey, parseKey, publicKeyOf } from "../../lib/wireguard/mod.ts";
import { SystemRunner } from "../../lib/ip/mod.ts";

const hasWg = (await new SystemRunner().exec(["sh", "-c", "command -v wg"])).code === 0;

Deno.test("generateKeyPair() gives base64 keys of 32 bytes, a clamped private key", async () => {
  const k = await generateKeyPair();
  for (const key of [k.privateKey, k.publicKey]) {
    assert.ok(isKey(key));
    assert.equal(atob(key).length, 32);
  }
  const raw = Uint8Array.from(atob(k.privateKey), (c) => c.charCodeAt(0));
  assert.equal((raw[0] as number) & 7, 0);
  assert.equal((raw[31] as number) & 0xc0, 0x40);
  assert.equal(await publicKeyOf(k.privateKey), k.publicKey);
  assert.notEqual((await generateKeyPair()).privateKey, k.privateKey);
});

Deno.test({
  name: "publicKeyOf() equals what `wg pubkey` computes",
  ignore: !hasWg,
  async fn() {
    const runner = new SystemRunner();
    for (let i = 0; i < 5; i++) {
      const k = await generateKeyPair();
      const fromWg = (await runner.run(["wg", "pubkey"], { stdin: k.privateKey + "\n" })).trim();
      assert.equal(fromWg, k.publicKey);
      const priv = (await runner.run(["wg", "genkey"])).trim();
      const pub = (await runner.run(["wg", "pubkey"], { stdin: priv + "\n" })).trim();
      assert.equal(await publicKeyOf(priv), pub);
    }
  },
});

Deno.test("parseKey() refuses wrong lengths and bad base64 without echoing the input", () => {
  const secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw=="; // 33 bytes
  for (const bad of [secret, "", "abc", "!".repeat(44), "A".repeat(43) + "B", 42]) {
    assert.throws(() => parseKey(bad, "peer key"), (err: Error) => {
      assert.ok(err instanceof TypeError);
      assert.match(err.message, /^Cannot use peer key/);
      assert.ok(typeof bad !== "string" || bad === "" || !err.message.includes(bad));
      return true;
    });
  }
  assert.equal(parseKey(" " + "A".repeat(43) + "= "), "A".repeat(43) + "=");
});
