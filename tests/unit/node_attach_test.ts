import assert from "node:assert/strict";
import { createLocalApp, type LocalHandlers } from "../../lib/api/local_app.ts";
import type { WorkloadPeers } from "../../lib/api/local_types.ts";
import { ConflictError } from "../../lib/errors.ts";
import { mapError } from "../../modes/node/local_handlers.ts";
import { attach, detach, renderWorkloadWgQuick, workloadConfig } from "../../modes/node/attach.ts";
import { serveOnSocket } from "./_unix_serve.ts";

const KEY = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const NODE_KEY = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

const peers: WorkloadPeers = {
  name: "vm-1",
  addresses: ["10.244.1.9/32", "fd00:10:244:1::9/128"],
  mtu: 1420,
  peers: [{
    name: "node/node1",
    publicKey: NODE_KEY,
    endpoint: "127.0.0.1:51820",
    allowedIps: ["0.0.0.0/0", "::/0"],
    persistentKeepalive: 25,
  }],
  clusterCidrs: ["10.244.0.0/16", "fd00:10:244::/56"],
};

Deno.test("the wg-quick form has no PrivateKey line, and says where the workload's key goes", () => {
  const w = workloadConfig(peers, { publicKey: KEY, endpointPort: 40001, allowedIps: "default" });
  const text = renderWorkloadWgQuick(w);
  assert.doesNotMatch(text, /^PrivateKey/m);
  assert.match(text, /^# PrivateKey = <the workload's private key, of public key /m);
  assert.match(text, /put it here/);
  assert.match(text, /never passes through wgcni/);
  assert.match(text, /^Address = 10\.244\.1\.9\/32, fd00:10:244:1::9\/128$/m);
  assert.match(text, /^MTU = 1420$/m);
  assert.match(text, /^ListenPort = 40001$/m);
  assert.match(text, new RegExp(`^PublicKey = ${NODE_KEY.replace(/[+/]/g, "\\$&")}$`, "m"));
  assert.match(text, /^Endpoint = 127\.0\.0\.1:51820$/m);
  assert.match(text, /^AllowedIPs = 0\.0\.0\.0\/0, ::\/0$/m);
  assert.match(text, /^PersistentKeepalive = 25$/m);
  const cluster = workloadConfig(peers, { publicKey: KEY, allowedIps: "cluster" });
  assert.deepEqual(cluster.peers[0]?.allowedIps, peers.clusterCidrs);
  assert.equal(cluster.listenPort, undefined);
  assert.doesNotMatch(renderWorkloadWgQuick(cluster), /ListenPort/);
});

/** A node manager's local API on a unix socket whose workload steps are `w`. */
async function serve(w: Partial<LocalHandlers["workloads"]>, calls: string[]) {
  const handlers = {
    workloads: {
      allocate: (name: string) => {
        calls.push(`allocate ${name}`);
        return Promise.resolve({ name, addresses: peers.addresses, created: true });
      },
      register: (name: string, key: { publicKey: string }) => {
        calls.push(`register ${name}`);
        return Promise.resolve({
          name,
          phase: "ready" as const,
          addresses: peers.addresses,
          publicKey: key.publicKey,
        });
      },
      peers: (name: string) => {
        calls.push(`peers ${name}`);
        return Promise.resolve(peers);
      },
      release: (name: string) => {
        calls.push(`release ${name}`);
        return Promise.resolve({ name, released: true });
      },
      list: () => Promise.resolve([]),
      ...w,
    },
  } as unknown as LocalHandlers;
  return await serveOnSocket(createLocalApp(handlers, mapError).fetch);
}

Deno.test("attach runs the three steps in order and returns the workload's configuration", async () => {
  const calls: string[] = [];
  await using s = await serve({}, calls);
  const w = await attach({
    socket: s.path,
    name: "vm-1",
    publicKey: KEY,
    format: "json",
    allowedIps: "default",
  });
  assert.deepEqual(calls, ["allocate vm-1", "register vm-1", "peers vm-1"]);
  assert.equal(w.publicKey, KEY);
  assert.deepEqual(w.addresses, peers.addresses);
  assert.deepEqual(await detach({ socket: s.path, name: "vm-1" }), {
    name: "vm-1",
    released: true,
  });
});

Deno.test("a refused registration releases the addresses that attach allocated, not older ones", async () => {
  for (const created of [true, false]) {
    const calls: string[] = [];
    await using s = await serve({
      allocate: (name) => {
        calls.push(`allocate ${name}`);
        return Promise.resolve({ name, addresses: peers.addresses, created });
      },
      register: () => Promise.reject(new ConflictError("its public key is the node's own key")),
    }, calls);
    await assert.rejects(
      attach({
        socket: s.path,
        name: "vm-1",
        publicKey: KEY,
        format: "json",
        allowedIps: "default",
      }),
      (err: Error) => err instanceof ConflictError && /the node's own key/.test(err.message),
    );
    assert.deepEqual(calls, created ? ["allocate vm-1", "release vm-1"] : ["allocate vm-1"]);
  }
});

Deno.test("attach without a node manager names the socket", async () => {
  await assert.rejects(
    attach({
      socket: "/nonexistent/wgcni.sock",
      name: "vm-1",
      publicKey: KEY,
      format: "json",
      allowedIps: "default",
    }),
    /no socket at \/nonexistent\/wgcni\.sock/,
  );
});
