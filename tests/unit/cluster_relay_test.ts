/**
 * The relay on real UDP sockets on loopback: what one side sends reaches the
 * other from the port it sends to, strangers cannot take a side, ports run
 * out with a clear error and come back when a pair idles; and the node's
 * choice of path (PathKeeper) over a scripted interface.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { Relay } from "../../modes/cluster/relay.ts";
import { PathKeeper, RELAY_AFTER_MS } from "../../modes/node/nat.ts";
import { PoolExhaustedError } from "../../lib/errors.ts";
import { getLogger } from "../../lib/log.ts";
import type { PeerEntry } from "../../lib/domain/cluster.ts";

const logger = getLogger("test");
const KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

/** A UDP socket on loopback that collects what it receives. */
async function node(): Promise<{
  socket: dgram.Socket;
  got: { text: string; port: number }[];
  close: () => void;
}> {
  const socket = dgram.createSocket("udp4");
  const got: { text: string; port: number }[] = [];
  socket.on("message", (m, r) => got.push({ text: new TextDecoder().decode(m), port: r.port }));
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", () => r()));
  return { socket, got, close: () => socket.close() };
}

function send(s: dgram.Socket, endpoint: string, text: string): Promise<void> {
  const [host, port] = endpoint.split(":");
  return new Promise((r) => s.send(new TextEncoder().encode(text), Number(port), host, () => r()));
}

async function until(what: string, fn: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !fn(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(fn(), what);
}

/** A free UDP port range on loopback, to keep runs apart: a random start. */
function firstPort(): number {
  return 40000 + Math.floor(Math.random() * 2000) * 8;
}

Deno.test("the relay passes each side's packets to the other, from the port the other sends to", async () => {
  let now = 1000;
  const relay = new Relay({
    address: "127.0.0.1",
    firstPort: firstPort(),
    ports: 4,
    logger,
    now: () => now,
  });
  const [a, b] = [await node(), await node()];
  try {
    const forA = await relay.endpointFor("a", "127.0.0.1", "b", "127.0.0.1");
    const forB = await relay.endpointFor("b", "127.0.0.1", "a", "127.0.0.1");
    assert.notEqual(forA, forB);
    assert.equal(await relay.endpointFor("a", "127.0.0.1", "b", "127.0.0.1"), forA, "one pair");
    // The first packet has nowhere to go yet (b unseen); then both ways.
    await send(a.socket, forA, "a1");
    await send(b.socket, forB, "b1");
    await until("a got b1", () => a.got.length === 1);
    assert.deepEqual(a.got[0], { text: "b1", port: Number(forA.split(":")[1]) });
    await send(a.socket, forA, "a2");
    await until("b got a2", () => b.got.length === 1);
    assert.deepEqual(b.got[0], { text: "a2", port: Number(forB.split(":")[1]) });
    assert.equal(relay.stats.pairs, 1);
    assert.equal(relay.stats.packets, 2);
    // Idle past the idle time: the ports come back.
    now += 10 * 60_000;
    relay.sweep();
    assert.equal(relay.stats.pairs, 0);
  } finally {
    a.close();
    b.close();
    relay.close();
  }
});

Deno.test("the relay takes a side's packets only from that node's address; ports run out clearly", async () => {
  const relay = new Relay({ address: "127.0.0.1", firstPort: firstPort(), ports: 2, logger });
  const [a, b] = [await node(), await node()];
  try {
    // b is known at another address: what comes from loopback for it is dropped.
    const forA = await relay.endpointFor("a", "127.0.0.1", "b", "192.0.2.9");
    const forB = await relay.endpointFor("b", "192.0.2.9", "a", "127.0.0.1");
    await send(b.socket, forB, "stranger");
    await send(a.socket, forA, "a1");
    await until("the stranger's packet refused", () => relay.stats.refused === 1);
    assert.equal(relay.stats.packets, 0);
    assert.deepEqual(b.got, []);
    // Two ports, one pair: a second pair has none.
    await assert.rejects(
      relay.endpointFor("c", "127.0.0.1", "d", "127.0.0.1"),
      (err: Error) => err instanceof PoolExhaustedError && /no free port left/.test(err.message),
    );
    assert.equal(relay.stats.pairs, 1);
    // A gone node's pair ends.
    relay.sweep(new Set(["b"]));
    assert.equal(relay.stats.pairs, 0);
    await new Promise((r) => setTimeout(r, 50));
    await relay.endpointFor("c", "127.0.0.1", "d", "127.0.0.1");
  } finally {
    a.close();
    b.close();
    relay.close();
  }
});

/** A PathKeeper over a scripted interface and clock. */
function keeper(options: { probeMs?: number; pingAnswers?: boolean } = {}) {
  let now = 1_000_000;
  const peer: PeerEntry = {
    kind: "node",
    name: "b",
    publicKey: KEY,
    endpoint: "198.51.100.2:51820",
    allowedIps: ["10.244.1.0/24"],
    nat: true,
  };
  const iface = { endpoint: peer.endpoint as string | null, handshake: 0, rx: 0 };
  const log: string[] = [];
  const k = new PathKeeper({
    show: () =>
      Promise.resolve({
        peers: [{
          publicKey: peer.publicKey,
          endpoint: iface.endpoint,
          latestHandshake: iface.handshake,
          rxBytes: iface.rx,
          txBytes: 0,
          hasPresharedKey: false,
          allowedIps: peer.allowedIps,
          persistentKeepalive: 25,
        }],
      }),
    peers: () => [peer],
    relay: (name) => {
      log.push(`relay ${name}`);
      return Promise.resolve("203.0.113.1:7600");
    },
    choose: (_key, endpoint, apply = true) => {
      log.push(`choose ${endpoint ?? "cluster"}${apply ? "" : " (as is)"}`);
      if (apply) iface.endpoint = endpoint ?? peer.endpoint!;
      return Promise.resolve();
    },
    setEndpoint: (_key, endpoint) => {
      log.push(`set ${endpoint}`);
      iface.endpoint = endpoint;
      return Promise.resolve();
    },
    ping: () => {
      log.push("ping");
      return Promise.resolve(options.pingAnswers ?? false);
    },
    probeMs: options.probeMs ?? 60_000,
    logger,
    now: () => now,
  });
  return { k, iface, log, advance: (ms: number) => (now += ms), now: () => now };
}

Deno.test("PathKeeper: no handshake with a NAT'd node: relayed; a direct try that gets no answer keeps the relay", async () => {
  const { k, iface, log, advance } = keeper();
  await k.poll();
  advance(RELAY_AFTER_MS - 1);
  await k.poll();
  assert.deepEqual(log, [], "not before the grace");
  advance(1);
  await k.poll();
  assert.deepEqual(log, ["relay b", "choose 203.0.113.1:7600"]);
  assert.ok(
    k.isRelayed(
      iface.endpoint === "203.0.113.1:7600"
        ? k.constructor.name && "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
        : "",
    ),
  );
  log.length = 0;
  advance(60_000);
  await k.poll();
  assert.deepEqual(log, ["set 198.51.100.2:51820", "ping", "set 203.0.113.1:7600"]);
  assert.equal(iface.endpoint, "203.0.113.1:7600");
});

Deno.test("PathKeeper: a direct try that is answered leaves the relay; a path gone silent goes back to it", async () => {
  const { k, iface, log, advance } = keeper({ pingAnswers: true });
  await k.poll();
  advance(RELAY_AFTER_MS);
  await k.poll();
  log.length = 0;
  // Packets from the peer's own endpoint (it moved there): tried, answered, direct.
  iface.endpoint = "198.51.100.2:51820";
  iface.rx = 100;
  iface.handshake = 1;
  await k.poll();
  assert.deepEqual(log, ["set 198.51.100.2:51820", "ping", "choose cluster (as is)"]);
  assert.equal(k.isRelayed(KEY), false);
  log.length = 0;
  // Then nothing comes for a minute: relayed again.
  advance(59_000);
  await k.poll();
  assert.deepEqual(log, []);
  advance(2_000);
  await k.poll();
  assert.deepEqual(log, ["relay b", "choose 203.0.113.1:7600"]);
});
