import assert from "node:assert/strict";
import { RecordingRunner, SystemRunner } from "../../lib/ip/mod.ts";
import { generateKeyPair, unixSocketExchange, WireGuardControl } from "../../lib/wireguard/mod.ts";

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

Deno.test("concurrent first create() calls decide the backend once and all succeed", async () => {
  // Both kernels, as a node manager restarted on an adopted interface meets
  // them: the backend is not known yet when many ADDs arrive at once.
  for (const kernel of [false, true]) {
    const runner = new RecordingRunner(async (argv) => {
      // Every command takes a while, so the calls overlap.
      await new Promise((r) => setTimeout(r, 5));
      return argv[0] === "ip" && argv.includes("wireguard") && !kernel
        ? { code: 2, stderr: "Error: Unknown device type.\n" }
        : undefined;
    });
    const wg = new WireGuardControl(runner);
    const names = Array.from({ length: 8 }, (_, i) => `wgp${i}`);
    const backends = await Promise.all(names.map((n) => wg.create(n)));
    assert.deepEqual(new Set(backends), new Set([kernel ? "kernel" : "userspace"]));
    const probes = runner.lines.filter((l) => l.endsWith("type wireguard"));
    if (kernel) {
      assert.deepEqual(probes.sort(), names.map((n) => `ip link add ${n} type wireguard`).sort());
    } else {
      assert.equal(probes.length, 1, "one probe of the kernel");
      assert.deepEqual(
        runner.lines.filter((l) => l.startsWith("wireguard-go")).sort(),
        names.map((n) => `wireguard-go ${n}`).sort(),
      );
    }
  }
});

Deno.test("a failed first create() leaves the backend undecided for the next", async () => {
  let calls = 0;
  const runner = new RecordingRunner((argv) =>
    argv[0] === "ip" && argv.includes("wireguard")
      ? calls++ === 0
        ? { code: 2, stderr: "RTNETLINK answers: File exists" }
        : { code: 2, stderr: "Error: Unknown device type.\n" }
      : undefined
  );
  const wg = new WireGuardControl(runner);
  const [first, second] = await Promise.allSettled([wg.create("wgp0"), wg.create("wgp1")]);
  assert.equal(first.status, "rejected");
  assert.deepEqual(second, { status: "fulfilled", value: "userspace" });
  assert.equal(wg.backend, "userspace");
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

/** The hex form of a base64 key, as the control socket takes it. */
function hex(key: string): string {
  return [...atob(key)].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
}

Deno.test("on wireguard-go, configuration goes to the control socket: no `wg`, the key never on a command line", async () => {
  const runner = new RecordingRunner();
  const seen: [string, string][] = [];
  const wg = new WireGuardControl(runner, {
    backend: "userspace",
    socketDir: "/run/test-wg",
    socketExchange: (path, request) => {
      seen.push([path, request]);
      return Promise.resolve(
        request.startsWith("get=1")
          ? "private_key=00\nlisten_port=41234\nerrno=0\n\n"
          : "errno=0\n\n",
      );
    },
  });
  const node = { publicKey: PUB, endpoint: "127.0.0.1:51820", allowedIps: ["0.0.0.0/0", "::/0"] };
  await wg.configure("wgp1", {
    privateKey: PRIV,
    listenPort: 0,
    replacePeers: true,
    peers: [node],
  });
  assert.equal(await wg.listenPort("wgp1", { netns: "p1" }), 41234, "found by name anywhere");
  await wg.setPeer("wgcni0", { ...node, persistentKeepalive: 25, allowedIps: [] });
  await wg.removePeer("wgcni0", PUB);
  // Unset means unchanged: only the keep-alive.
  await wg.configure("wgcni0", { peers: [{ publicKey: PUB, persistentKeepalive: 0 }] });
  // Nothing to change: nothing sent.
  await wg.configure("wgcni0", {});
  assert.deepEqual(runner.lines, []);
  assert.deepEqual(seen, [
    [
      "/run/test-wg/wgp1.sock",
      `set=1\nprivate_key=${hex(PRIV)}\nlisten_port=0\nreplace_peers=true\npublic_key=${
        hex(PUB)
      }\n` +
      "endpoint=127.0.0.1:51820\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\n",
    ],
    ["/run/test-wg/wgp1.sock", "get=1\n\n"],
    [
      "/run/test-wg/wgcni0.sock",
      `set=1\npublic_key=${hex(PUB)}\nendpoint=127.0.0.1:51820\n` +
      "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\n",
    ],
    ["/run/test-wg/wgcni0.sock", `set=1\npublic_key=${hex(PUB)}\nremove=true\n\n`],
    [
      "/run/test-wg/wgcni0.sock",
      `set=1\npublic_key=${hex(PUB)}\npersistent_keepalive_interval=0\n\n`,
    ],
  ]);
});

Deno.test("on wireguard-go, `wg` is used when no wireguard-go listens; an error reply is an error", async () => {
  const runner = new RecordingRunner((argv) =>
    argv[2] === "wgk" ? { stdout: "51820\n" } : undefined
  );
  let reply = "";
  const wg = new WireGuardControl(runner, {
    backend: "userspace",
    socketExchange: (path) =>
      path.endsWith("/wgk.sock")
        ? Promise.reject(new Deno.errors.NotFound("no socket"))
        : path.endsWith("/wgr.sock")
        ? Promise.reject(new Deno.errors.ConnectionRefused("stale"))
        : path.endsWith("/wgx.sock")
        ? Promise.reject(new Deno.errors.ConnectionReset("dropped"))
        : Promise.resolve(reply),
  });
  await wg.configure("wgk", { privateKey: PRIV, listenPort: 0 }, { netns: "p1" });
  assert.equal(await wg.listenPort("wgk"), 51820);
  await wg.removePeer("wgr", PUB);
  await wg.setPeer("wgx", { publicKey: PUB, allowedIps: ["10.0.0.1/32"] });
  assert.deepEqual(runner.lines, [
    "nsenter --net=/run/netns/p1 -- wg set wgk private-key /dev/stdin listen-port 0",
    "wg show wgk listen-port",
    `wg set wgr peer ${PUB} remove`,
    `wg set wgx peer ${PUB} allowed-ips 10.0.0.1/32`,
  ]);
  assert.equal(runner.commands[0]?.options.stdin, PRIV + "\n");
  reply = "errno=22\n\n";
  await assert.rejects(
    () => wg.configure("wgp1", { privateKey: PRIV }),
    (err: unknown) =>
      /Cannot configure wgp1: wireguard-go answered error 22/.test(String(err)) &&
      !String(err).includes(hex(PRIV)) && !String(err).includes(PRIV),
  );
  reply = "";
  await assert.rejects(() => wg.listenPort("wgp1"), /answered nothing/);
});

Deno.test("unixSocketExchange() sends one request and reads the reply up to its empty line", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/wgp1.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const requests: string[] = [];
  const served = (async () => {
    for (let i = 0; i < 2; i++) {
      const conn = await listener.accept();
      let text = "";
      const buf = new Uint8Array(64);
      while (!text.endsWith("\n\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      requests.push(text);
      // The reply in pieces, as a busy peer may write it.
      const reply = text.startsWith("get=1") ? "listen_port=41234\nerrno=0\n\n" : "errno=0\n\n";
      for (const part of [reply.slice(0, 5), reply.slice(5)]) {
        await conn.write(new TextEncoder().encode(part));
        await new Promise((r) => setTimeout(r, 5));
      }
      conn.close();
    }
  })();
  try {
    const wg = new WireGuardControl(new RecordingRunner(), {
      backend: "userspace",
      socketDir: dir,
    });
    await wg.configure("wgp1", { privateKey: PRIV });
    assert.equal(await wg.listenPort("wgp1"), 41234);
    await served;
    assert.deepEqual(requests, [`set=1\nprivate_key=${hex(PRIV)}\n\n`, "get=1\n\n"]);
    await assert.rejects(
      () => unixSocketExchange(`${dir}/none.sock`, "get=1\n\n"),
      Deno.errors.NotFound,
    );
  } finally {
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
});

const canRunWireGuardGo = Deno.uid() === 0 &&
  (await new SystemRunner().exec(["sh", "-c", "command -v wireguard-go && command -v wg"])).code ===
    0;

Deno.test({
  name: "a real wireguard-go: configured through its socket as `wg` would, gone with its link",
  ignore: !canRunWireGuardGo,
  fn: async () => {
    const runner = new SystemRunner();
    const netns = `wgcni-ut-${crypto.randomUUID().slice(0, 8)}`;
    const name = `wgut${crypto.randomUUID().slice(0, 8)}`;
    await runner.run(["ip", "netns", "add", netns]);
    try {
      const wg = new WireGuardControl(runner, { backend: "userspace" });
      await wg.create(name, { netns });
      const keys = await generateKeyPair();
      const peer = await generateKeyPair();
      await wg.configure(name, {
        privateKey: keys.privateKey,
        listenPort: 0,
        peers: [{
          publicKey: peer.publicKey,
          endpoint: "127.0.0.1:9",
          allowedIps: ["10.9.0.0/24"],
        }],
      });
      // wireguard-go binds once its TUN reports up, which it learns a moment after creation.
      let port = 0;
      for (let i = 0; i < 100 && port === 0; i++) {
        port = await wg.listenPort(name);
        if (port === 0) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(port > 0);
      // What `wg` reads back is what the socket was told.
      const state = await wg.show(name, { netns });
      assert.equal(state.publicKey, keys.publicKey);
      assert.equal(state.listenPort, port);
      assert.deepEqual(state.peers.map((p) => [p.publicKey, p.endpoint, p.allowedIps]), [
        [peer.publicKey, "127.0.0.1:9", ["10.9.0.0/24"]],
      ]);
      const keepalive = { publicKey: peer.publicKey, allowedIps: [], persistentKeepalive: 25 };
      await wg.setPeer(name, keepalive);
      assert.deepEqual(
        (await wg.show(name, { netns })).peers.map((p) => [p.allowedIps, p.persistentKeepalive]),
        [[[], 25]],
      );
      await wg.removePeer(name, peer.publicKey);
      assert.equal((await wg.show(name, { netns })).peers.length, 0);
      await wg.delete(name, { netns });
      // wireguard-go ends with its TUN and takes its socket along.
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        try {
          Deno.statSync(wg.socketPath(name));
        } catch {
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.throws(() => Deno.statSync(wg.socketPath(name)), "its socket is gone");
    } finally {
      await runner.exec(["ip", "netns", "del", netns]);
    }
  },
});

Deno.test("on the kernel, one `wg set` per change: unset fields unchanged, replacePeers removes the others", async () => {
  const OTHER = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
  // `wg show NAME dump`: the interface line, then one line per peer.
  const dump = `${PRIV}\t${PUB}\t51820\toff\n` +
    `${OTHER}\t(none)\t(none)\t10.0.0.9/32\t0\t0\t0\toff\n` +
    `${PUB}\t(none)\t127.0.0.1:1\t0.0.0.0/0\t0\t0\t0\toff\n`;
  const runner = new RecordingRunner((argv) => argv[3] === "dump" ? { stdout: dump } : undefined);
  const wg = new WireGuardControl(runner, { backend: "kernel" });
  await wg.configure("eth0", { peers: [{ publicKey: PUB, persistentKeepalive: 25 }] }, {
    netns: "p1",
  });
  await wg.configure("wgp1", {
    privateKey: PRIV,
    listenPort: 0,
    replacePeers: true,
    peers: [{ publicKey: PUB, endpoint: "127.0.0.1:51820", allowedIps: ["0.0.0.0/0"] }],
  });
  await wg.configure("wgp1", {});
  assert.deepEqual(runner.lines, [
    `nsenter --net=/run/netns/p1 -- wg set eth0 peer ${PUB} persistent-keepalive 25`,
    "wg show wgp1 dump",
    `wg set wgp1 private-key /dev/stdin listen-port 0 peer ${OTHER} remove peer ${PUB} endpoint 127.0.0.1:51820 allowed-ips 0.0.0.0/0`,
  ]);
  assert.ok(!runner.lines.join(" ").includes(PRIV));
});
