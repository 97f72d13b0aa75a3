import assert from "node:assert/strict";
import { generateKeyPair, parseDump, renderWgQuick } from "../../lib/wireguard/mod.ts";
import { SystemRunner } from "../../lib/ip/mod.ts";

const K1 = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const K2 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const K3 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const PRIVATE = "0CvNBVNWjEaIWGOpx5Xz+QXRtDBv4PKyXu8gd9Ko+VY=";
const PRESHARED = "fE3bpvEZeu6y8Ce3AIYXEMlGNiNNs7Ur1L3O6dRI22A=";

Deno.test("parseDump() reads the interface and peers and drops every secret", () => {
  const dump = [
    [K1, K2, "51820", "off"].join("\t"),
    [
      K3,
      "(none)",
      "192.0.2.11:51820",
      "10.244.1.0/24,fd00:10:244:1::/64",
      "1700000000",
      "1234",
      "5678",
      "off",
    ].join("\t"),
    [K1, PRESHARED, "(none)", "(none)", "0", "0", "0", "25"].join("\t"),
    "",
  ].join("\n");
  const s = parseDump(dump);
  assert.deepEqual(s, {
    publicKey: K2,
    listenPort: 51820,
    fwmark: null,
    peers: [
      {
        publicKey: K3,
        hasPresharedKey: false,
        endpoint: "192.0.2.11:51820",
        allowedIps: ["10.244.1.0/24", "fd00:10:244:1::/64"],
        latestHandshake: 1700000000,
        rxBytes: 1234,
        txBytes: 5678,
        persistentKeepalive: null,
      },
      {
        publicKey: K1,
        hasPresharedKey: true,
        endpoint: null,
        allowedIps: [],
        latestHandshake: 0,
        rxBytes: 0,
        txBytes: 0,
        persistentKeepalive: 25,
      },
    ],
  });
  // The private key (first field) and the preshared key are nowhere in the result.
  const json = JSON.stringify(s);
  assert.ok(!json.includes(PRIVATE));
  assert.ok(!json.includes(PRESHARED));
});

Deno.test("parseDump() refuses malformed dumps with the line number", () => {
  const cases: [string, RegExp][] = [
    ["", /empty/],
    ["a\tb\tc", /line 1: expected 4 fields/],
    [[K1, K2, "x", "off"].join("\t"), /line 1: listen port/],
    [
      [K1, K2, "1", "off"].join("\t") + "\n" + [K3, "(none)", "(none)"].join("\t"),
      /line 2: expected 8/,
    ],
    [
      [K1, K2, "1", "off"].join("\t") + "\n" +
      [K3, "(none)", "(none)", "(none)", "z", "0", "0", "off"].join("\t"),
      /line 2: latest handshake/,
    ],
  ];
  for (const [text, re] of cases) assert.throws(() => parseDump(text), re);
});

Deno.test("renderWgQuick() writes a wg-quick file and validates every value", () => {
  const text = renderWgQuick({
    privateKey: K1,
    addresses: ["10.250.0.2/32", "fd00:10:250::2/128"],
    mtu: 1420,
    peers: [{
      publicKey: K3,
      endpoint: "[2001:db8::11]:51820",
      allowedIps: ["10.244.1.0/24", "fd00:10:244:1::/64"],
      persistentKeepalive: 25,
    }],
  });
  assert.equal(
    text,
    `[Interface]\nPrivateKey = ${K1}\nAddress = 10.250.0.2/32, fd00:10:250::2/128\nMTU = 1420\n\n` +
      `[Peer]\nPublicKey = ${K3}\nEndpoint = [2001:db8::11]:51820\n` +
      `AllowedIPs = 10.244.1.0/24, fd00:10:244:1::/64\nPersistentKeepalive = 25\n`,
  );
  const base = { privateKey: K1, addresses: ["10.0.0.2/32"], peers: [] };
  const bad: [object, RegExp][] = [
    [{ ...base, privateKey: "nope" }, /private key/],
    [{ ...base, addresses: [] }, /no address/],
    [{ ...base, addresses: ["10.0.0.2"] }, /address "10.0.0.2"/],
    [{ ...base, mtu: 100 }, /MTU/],
    [{ ...base, listenPort: 70000 }, /port/],
    [{ ...base, peers: [{ publicKey: K2, endpoint: "host:1", allowedIps: [] }] }, /endpoint/],
    [{ ...base, peers: [{ publicKey: K2, allowedIps: ["10.0.0.0/33"] }] }, /allowed IP/],
  ];
  for (const [cfg, re] of bad) {
    assert.throws(() => renderWgQuick(cfg as Parameters<typeof renderWgQuick>[0]), re);
  }
});

const canStrip = Deno.uid() === 0 &&
  (await new SystemRunner().exec(["sh", "-c", "command -v wg-quick"])).code === 0;

Deno.test({
  name: "renderWgQuick() output is accepted by `wg-quick strip`",
  ignore: !canStrip,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const k = await generateKeyPair();
      const file = `${dir}/wgt0.conf`;
      await Deno.writeTextFile(
        file,
        renderWgQuick({
          privateKey: k.privateKey,
          addresses: ["10.250.0.2/32"],
          peers: [{ publicKey: K3, endpoint: "192.0.2.1:51820", allowedIps: ["10.244.0.0/16"] }],
        }),
        { mode: 0o600 },
      );
      const out = await new SystemRunner().run(["wg-quick", "strip", file]);
      assert.match(out, new RegExp(`PrivateKey = ${k.privateKey.replace(/[+/]/g, "\\$&")}`));
      assert.match(out, /AllowedIPs = 10.244.0.0\/16/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
