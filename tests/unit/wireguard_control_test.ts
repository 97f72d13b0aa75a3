import assert from "node:assert/strict";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { WireGuardControl } from "../../lib/wireguard/mod.ts";

const PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const PUB = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

Deno.test("create() chooses wireguard-go once when the kernel lacks WireGuard", async () => {
  const runner = new RecordingRunner((argv) =>
    argv[0] === "ip" && argv.includes("wireguard")
      ? { code: 2, stderr: "Error: Unknown device type.\n" }
      : undefined
  );
  const wg = new WireGuardControl(runner);
  assert.equal(await wg.create("wgcni0", { mtu: 1420 }), "userspace");
  assert.equal(await wg.create("wgp1", { netns: "node1" }), "userspace");
  assert.equal(wg.backend, "userspace");
  assert.deepEqual(runner.lines, [
    "ip link add wgcni0 type wireguard",
    "wireguard-go wgcni0",
    "ip link set wgcni0 mtu 1420",
    "nsenter --net=/run/netns/node1 -- wireguard-go wgp1",
  ]);
});

Deno.test("create() uses the kernel when it knows the link type", async () => {
  const runner = new RecordingRunner();
  const wg = new WireGuardControl(runner);
  assert.equal(await wg.create("wgcni0"), "kernel");
  assert.deepEqual(runner.lines, ["ip link add wgcni0 type wireguard"]);
});

Deno.test("create() reports other failures instead of falling back", async () => {
  const runner = new RecordingRunner(() => ({ code: 2, stderr: "RTNETLINK answers: File exists" }));
  await assert.rejects(() => new WireGuardControl(runner).create("wgcni0"), /File exists/);
});

Deno.test("configure() passes the private key on stdin, never on the command line", async () => {
  const runner = new RecordingRunner();
  await new WireGuardControl(runner).configure("wgcni0", { privateKey: PRIV, listenPort: 51820 });
  assert.deepEqual(runner.lines, ["wg set wgcni0 private-key /dev/stdin listen-port 51820"]);
  assert.equal(runner.commands[0]?.options.stdin, PRIV + "\n");
  assert.ok(!runner.lines.join(" ").includes(PRIV));
});

Deno.test("setPeer() and removePeer() are one `wg set` each", async () => {
  const runner = new RecordingRunner();
  const wg = new WireGuardControl(runner);
  await wg.setPeer("wgcni0", {
    publicKey: PUB,
    endpoint: "192.0.2.12:51820",
    allowedIps: ["10.244.2.0/24", "fd00:10:244:2::/64"],
  });
  await wg.setPeer("wgcni0", { publicKey: PUB, allowedIps: [], persistentKeepalive: 0 });
  await wg.removePeer("wgcni0", PUB, { netns: "n1" });
  assert.deepEqual(runner.lines, [
    `wg set wgcni0 peer ${PUB} endpoint 192.0.2.12:51820 allowed-ips 10.244.2.0/24,fd00:10:244:2::/64`,
    `wg set wgcni0 peer ${PUB} persistent-keepalive off allowed-ips `,
    `nsenter --net=/run/netns/n1 -- wg set wgcni0 peer ${PUB} remove`,
  ]);
});

Deno.test("bad names, keys and endpoints are refused before anything runs", async () => {
  const runner = new RecordingRunner();
  const wg = new WireGuardControl(runner);
  await assert.rejects(() => wg.create("a/b"), /interface name/);
  await assert.rejects(() => wg.create("x".repeat(16)), /interface name/);
  await assert.rejects(
    () => wg.setPeer("wg0", { publicKey: "bad", allowedIps: [] }),
    /peer public key/,
  );
  await assert.rejects(
    () => wg.setPeer("wg0", { publicKey: PUB, endpoint: "1.2.3.4", allowedIps: [] }),
    /endpoint/,
  );
  assert.equal(runner.commands.length, 0);
});

Deno.test("delete() tolerates an interface that is already gone", async () => {
  const runner = new RecordingRunner(() => ({ code: 1, stderr: 'Cannot find device "wgp1"' }));
  await new WireGuardControl(runner).delete("wgp1");
  const other = new RecordingRunner(() => ({ code: 2, stderr: "Operation not permitted" }));
  await assert.rejects(() => new WireGuardControl(other).delete("wgp1"), /not permitted/);
});

Deno.test("configure() can set the first peers in the same `wg set`", async () => {
  const runner = new RecordingRunner();
  await new WireGuardControl(runner).configure("wgp1", {
    privateKey: PRIV,
    listenPort: 0,
    peers: [{ publicKey: PUB, endpoint: "127.0.0.1:51820", allowedIps: ["0.0.0.0/0", "::/0"] }],
  });
  assert.deepEqual(runner.lines, [
    `wg set wgp1 private-key /dev/stdin listen-port 0 peer ${PUB} endpoint 127.0.0.1:51820 allowed-ips 0.0.0.0/0,::/0`,
  ]);
});
