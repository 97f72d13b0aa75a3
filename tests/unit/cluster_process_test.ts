/**
 * `wgcni cluster serve` as a real process on loopback: concurrent
 * registrations, watch deltas, kill -9 and restart, TLS, refusals to start,
 * and the admin commands of the CLI against it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import ipaddr from "ipaddr.js";
import { ClusterClient } from "../../lib/api/cluster_client.ts";
import type { NodeInfo, WatchEvent } from "../../lib/api/cluster_types.ts";
import { AuthError, TransportError } from "../../lib/errors.ts";
import { randomKey } from "./_cluster_fixture.ts";
import { readTokens, runWgcni, serveRefusal, startServer } from "./_cluster_process.ts";
import { tempDir } from "./_temp_dir.ts";

const POOLS = [
  "--listen",
  "127.0.0.1:0",
  "--pod-cidr",
  "10.128.0.0/14,fd00:128::/48",
  "--client-cidr",
  "100.64.0.0/16,fd00:64::/112",
];

function range(cidr: string): { family: number; start: bigint; end: bigint } {
  const [addr, prefix] = ipaddr.parseCIDR(cidr);
  const bits = addr.kind() === "ipv6" ? 128 : 32;
  let v = 0n;
  for (const b of addr.toByteArray()) v = (v << 8n) | BigInt(b);
  const host = (1n << BigInt(bits - prefix)) - 1n;
  return { family: bits, start: v & ~host, end: (v & ~host) | host };
}

function within(inner: string, outer: string): boolean {
  const a = range(inner);
  const b = range(outer);
  return a.family === b.family && a.start >= b.start && a.end <= b.end;
}

/** Asserts that no two of the CIDRs share an address. */
function assertDisjoint(cidrs: readonly string[]): void {
  const sorted = cidrs.map((c) => ({ c, ...range(c) })).sort((x, y) =>
    x.family - y.family || (x.start < y.start ? -1 : x.start > y.start ? 1 : 0)
  );
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (prev.family === cur.family) {
      assert.ok(cur.start > prev.end, `${prev.c} overlaps ${cur.c}`);
    }
  }
}

async function collect(
  it: AsyncGenerator<WatchEvent, void, undefined>,
  count: number,
  timeoutMs: number,
): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  const deadline = setTimeout(() => it.return(), timeoutMs);
  try {
    for await (const e of it) {
      out.push(e);
      if (out.length >= count) break;
    }
  } finally {
    clearTimeout(deadline);
  }
  return out;
}

function onPath(tool: string): boolean {
  return new Deno.Command("sh", { args: ["-c", `command -v ${tool}`], stdout: "null" })
    .outputSync().success;
}

/** Registers node `name` at `endpoint` under a fresh key. */
function register(url: string, token: string, name: string, endpoint = "192.0.2.1:51820") {
  return new ClusterClient(url, { token }).register({ name, publicKey: randomKey(), endpoint });
}

/**
 * Runs a server on `dir` just long enough to register `nodes` (name to
 * endpoint) with its join token, then stops it; returns its exit code.
 */
async function registerAndStop(
  dir: string,
  nodes: Readonly<Record<string, string>>,
  signal: Deno.Signal = "SIGTERM",
): Promise<number> {
  await using server = await startServer(dir, POOLS);
  const { join: token } = readTokens(dir);
  for (const [name, endpoint] of Object.entries(nodes)) {
    await register(server.url, token, name, endpoint);
  }
  return await server.stop(signal);
}

/** Runs `wgcni cluster node list ARGS`. */
function nodeList(args: readonly string[], env?: Record<string, string>) {
  return runWgcni(["cluster", "node", "list", ...args], env);
}

const WG_QUICK = onPath("wg-quick");
const OPENSSL = onPath("openssl");

Deno.test({
  name:
    "500 concurrent registrations get disjoint subnets, each seen as one delta, and survive kill -9",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    using tmp = tempDir("wgcni-cluster-proc-");
    const dir = tmp.path;
    const data = join(dir, "data");
    let nodesBefore: readonly NodeInfo[];
    let revision: number;
    {
      await using server = await startServer(data, POOLS);
      const tokens = readTokens(data);
      const admin = new ClusterClient(server.url, { token: tokens.admin });
      const join = new ClusterClient(server.url, { token: tokens.join });
      const stop = new AbortController();
      const watch = admin.watch(undefined, stop.signal);
      const first = await watch.next();
      assert.equal(first.value?.type, "snapshot");
      assert.equal(first.value?.revision, 0);
      const deltas = collect(watch, 500, 30_000);

      const results = await Promise.all(
        Array.from({ length: 500 }, (_, i) =>
          join.register({
            name: `node-${String(i).padStart(3, "0")}`,
            publicKey: randomKey(),
            endpoint: i % 2 === 0
              ? `192.0.2.${i % 250 + 1}:51820`
              : `[2001:db8::${i.toString(16)}]:51820`,
          })),
      );
      assert.equal(results.length, 500);
      const v4 = results.map((r) => r.node.subnets[0]!);
      const v6 = results.map((r) => r.node.subnets[1]!);
      for (const s of v4) assert.ok(within(s, "10.128.0.0/14"), s);
      for (const s of v6) assert.ok(within(s, "fd00:128::/48"), s);
      assert.ok(v4.every((s) => s.endsWith("/24")));
      assert.ok(v6.every((s) => s.endsWith("/64")));
      assertDisjoint([...v4, ...v6]);

      const seen = await deltas;
      stop.abort();
      assert.equal(seen.length, 500);
      assert.deepEqual(seen.map((e) => e.revision), Array.from({ length: 500 }, (_, i) => i + 1));
      assert.ok(seen.every((e) => e.type === "upsert" && e.peer.kind === "node"));
      const names = new Set(seen.map((e) => e.type === "upsert" ? e.peer.name : ""));
      assert.equal(names.size, 500);
      for (const r of results) {
        const e = seen.find((x) => x.type === "upsert" && x.peer.name === r.node.name);
        assert.ok(e?.type === "upsert");
        assert.deepEqual(e.peer.allowedIps, r.node.subnets);
      }
      nodesBefore = await admin.nodes();
      revision = (await admin.peers()).revision;
      assert.equal(revision, 500);
      assert.equal(await server.stop("SIGKILL"), 137);
    }
    {
      await using server = await startServer(data, POOLS);
      assert.equal(server.stdout(), "", "no tokens are generated (or shown) again");
      const tokens = readTokens(data);
      const admin = new ClusterClient(server.url, { token: tokens.admin });
      assert.deepEqual(await admin.nodes(), nodesBefore);
      assert.equal((await admin.peers()).revision, revision);

      // Resuming from the last revision: no snapshot, just what comes next.
      const stop = new AbortController();
      const resumed = admin.watch(revision, stop.signal);
      const next = collect(resumed, 1, 10_000);
      const late = await register(server.url, tokens.join, "node-late", "192.0.2.200:51820");
      const [event] = await next;
      assert.equal(event?.type, "upsert");
      assert.equal(event?.revision, revision + 1);
      assert.ok(event?.type === "upsert" && event.peer.name === "node-late");
      assert.ok(!nodesBefore.some((n) => n.subnets.some((s) => late.node.subnets.includes(s))));
      // From further back, the missed changes are replayed in order.
      const replay = await collect(admin.watch(400, stop.signal), 101, 10_000);
      assert.deepEqual(
        replay.map((e) => e.revision),
        Array.from({ length: 101 }, (_, i) => 401 + i),
      );
      stop.abort();
      assert.equal(await server.stop("SIGTERM"), 0);
    }
  },
});

Deno.test("a second server on the same data directory is refused", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await using _first = await startServer(dir, POOLS);
  const second = await serveRefusal(dir, POOLS);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /another process holds it/);
});

Deno.test("a damaged or lost store stops the server with a clear message", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  assert.equal(await registerAndStop(dir, { a: "192.0.2.1:51820" }), 0);
  const db = join(dir, "cluster.db");
  const good = Deno.readFileSync(db);

  // Torn: the file cut short.
  Deno.writeFileSync(db, good.slice(0, 3000));
  let r = await serveRefusal(dir, POOLS);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^wgcni: Cannot open .*cluster\.db/m);
  assert.match(r.stderr, /damaged|malformed|not a database/);

  // Overwritten with garbage.
  Deno.writeFileSync(db, new Uint8Array(good.length).fill(0x41));
  r = await serveRefusal(dir, POOLS);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /damaged|not a database/);

  // Gone while the directory still says a cluster lived here.
  Deno.removeSync(db);
  r = await serveRefusal(dir, POOLS);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cluster\.db is missing but .* held cluster/);
  assert.ok(!Deno.readDirSync(dir).some((e) => e.name === "cluster.db"), "no empty store made");

  // Back in place, it serves the same node again.
  Deno.writeFileSync(db, good);
  await using server = await startServer(dir, POOLS);
  const { admin } = readTokens(dir);
  assert.deepEqual(
    (await new ClusterClient(server.url, { token: admin }).nodes()).map((n) => n.name),
    ["a"],
  );
});

Deno.test("an emptied store, or one that lost committed revisions, is never served as a fresh one", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const db = join(dir, "cluster.db");
  assert.equal(await registerAndStop(dir, { a: "192.0.2.1:51820" }), 0);
  // A copy at revision 1 (as a backup would be), then two more nodes.
  const old = Deno.readFileSync(db);
  assert.equal(await registerAndStop(dir, { b: "192.0.2.2:51820", c: "192.0.2.3:51820" }), 0);
  assert.equal(Deno.readTextFileSync(join(dir, "cluster.revision")).trim(), "3");
  const good = Deno.readFileSync(db);

  // Emptied: a zero-length database without its WAL.
  Deno.writeFileSync(db, new Uint8Array(0));
  for (const f of ["cluster.db-wal", "cluster.db-shm"]) {
    try {
      Deno.removeSync(join(dir, f));
    } catch {
      // not there after a clean stop
    }
  }
  let r = await serveRefusal(dir, POOLS);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /cluster\.db holds no cluster, but .*cluster\.id says .* held cluster/);
  assert.equal(Deno.statSync(db).size, 0, "nothing was written into it");

  // Rolled back: the old copy put back.
  Deno.writeFileSync(db, old);
  r = await serveRefusal(dir, POOLS);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /is at revision 1, but this manager already served revision 3/);
  assert.match(r.stderr, /--restored/);

  // On purpose: --restored serves it past revision 3, so every node resyncs from a snapshot.
  {
    await using server = await startServer(dir, [...POOLS, "--restored"]);
    const { admin } = readTokens(dir);
    const api = new ClusterClient(server.url, { token: admin });
    assert.deepEqual((await api.nodes()).map((n) => n.name), ["a"]);
    assert.equal((await api.peers()).revision, 4);
    const stop = new AbortController();
    const [first] = await collect(api.watch(3, stop.signal), 1, 10_000);
    stop.abort();
    assert.equal(first?.type, "snapshot");
    assert.match(server.stderr(), /Started a restored store/);
  }
  // The good copy is fine with the recorded revision.
  Deno.writeFileSync(db, good);
  Deno.writeTextFileSync(join(dir, "cluster.revision"), "3\n");
  await using server = await startServer(dir, POOLS);
  assert.equal(
    (await new ClusterClient(server.url, { token: readTokens(dir).admin }).nodes()).length,
    3,
  );
});

Deno.test("changing the pools of a cluster with nodes is refused at start", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await registerAndStop(dir, { a: "192.0.2.1:51820" }, "SIGKILL");
  const r = await serveRefusal(dir, [
    "--listen",
    "127.0.0.1:0",
    "--pod-cidr",
    "10.200.0.0/16",
  ]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /changing the pools of a running cluster is not supported/);
});

Deno.test("serve refuses bad settings before touching anything", async (t) => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const cases: [string, string[], RegExp][] = [
    [
      "plain HTTP off loopback",
      ["--listen", "0.0.0.0:0", "--pod-cidr", "10.1.0.0/16"],
      /--insecure/,
    ],
    ["no pod pool", ["--listen", "127.0.0.1:0"], /--pod-cidr/],
    ["bad CIDR", ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.0.0/33"], /is not a CIDR/],
    [
      "host bits",
      ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.2.0/16"],
      /did you mean 10\.1\.0\.0\/16/,
    ],
    [
      "overlapping pools",
      ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.0.0/16", "--client-cidr", "10.1.200.0/24"],
      /overlap/,
    ],
    [
      "two pools of one family",
      ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.0.0/16,10.2.0.0/16"],
      /one per family/,
    ],
    [
      "node mask wider than the pool",
      ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.0.0/16", "--node-mask-v4", "8"],
      /the pool is smaller/,
    ],
    [
      "half a TLS pair",
      ["--listen", "127.0.0.1:0", "--pod-cidr", "10.1.0.0/16", "--tls-cert", "/nonexistent"],
      /both --tls-cert and --tls-key/,
    ],
    ["short admin token", ["--pod-cidr", "10.1.0.0/16", "--admin-token", "short"], /at least 16/],
    ["bad listen", ["--listen", "nowhere", "--pod-cidr", "10.1.0.0/16"], /ADDR:PORT/],
  ];
  for (const [what, args, message] of cases) {
    await t.step(what, async () => {
      const sub = join(dir, what.replace(/\W+/g, "-"));
      const r = await serveRefusal(sub, args);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, message);
    });
  }
});

Deno.test("flags come from WGCNI_ variables and a YAML config file too", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const config = join(dir, "cluster.yaml");
  Deno.writeTextFileSync(
    config,
    "listen: 127.0.0.1:0\npod-cidr:\n  - 10.77.0.0/16\n  - fd00:77::/56\nnode-mask-v4: 26\n",
  );
  await using server = await startServer(join(dir, "data"), ["--config", config], {
    env: { WGCNI_ADMIN_TOKEN: "env-admin-token-0123456789", WGCNI_CLIENT_CIDR: "100.77.0.0/24" },
  });
  assert.equal(server.stdout().includes("admin token"), false, "a given token is not generated");
  const admin = new ClusterClient(server.url, { token: "env-admin-token-0123456789" });
  const t = await admin.createToken();
  const r = await admin.withToken(t.token).register({
    name: "a",
    publicKey: randomKey(),
    endpoint: "192.0.2.1:51820",
  });
  assert.match(r.node.subnets[0]!, /^10\.77\.0\.0\/26$/);
  assert.deepEqual(r.cluster.clientCidrs, ["100.77.0.0/24"]);
});

Deno.test({
  name: "TLS: clients that trust the certificate connect, others cannot",
  ignore: !OPENSSL,
  fn: async () => {
    using tmp = tempDir("wgcni-cluster-proc-");
    const dir = tmp.path;
    const cert = join(dir, "cert.pem");
    const key = join(dir, "key.pem");
    const ca = join(dir, "ca.pem");
    const ec = [
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-days",
      "1",
    ];
    const openssl = (args: string[]) =>
      new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" }).output();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let made = await openssl([
      "req",
      "-x509",
      ...ec,
      "-keyout",
      join(dir, "ca.key"),
      "-out",
      ca,
      "-subj",
      "/CN=wgcni test CA",
    ]);
    assert.ok(made.success, new TextDecoder().decode(made.stderr));
    made = await openssl([
      "req",
      "-x509",
      ...ec,
      "-keyout",
      key,
      "-out",
      cert,
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-CA",
      ca,
      "-CAkey",
      join(dir, "ca.key"),
    ]);
    assert.ok(made.success, new TextDecoder().decode(made.stderr));
    await using server = await startServer(join(dir, "data"), [
      ...POOLS,
      "--tls-cert",
      cert,
      "--tls-key",
      key,
    ]);
    assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const { admin } = readTokens(join(dir, "data"));
    const trusted = new ClusterClient(server.url, {
      token: admin,
      caCert: Deno.readTextFileSync(ca),
    });
    try {
      assert.deepEqual(await trusted.nodes(), []);
    } finally {
      trusted.close();
    }
    await assert.rejects(
      new ClusterClient(server.url, { token: admin }).nodes(),
      (err: Error) =>
        err instanceof TransportError &&
        /Cannot reach the cluster manager at https:\/\/127\.0\.0\.1:\d+: its TLS certificate is refused: it is signed by a CA this node does not trust \(give that CA with --ca\)/
          .test(err.message),
    );
    // A node that cannot trust the manager, or speaks plain HTTP to its TLS
    // port, stops at once with the cause instead of retrying forever.
    const tokenFile = join(dir, "join-token");
    Deno.copyFileSync(join(dir, "data", "join-token"), tokenFile);
    const port = new URL(server.url).port;
    for (
      const [url, extra, cause] of [
        [
          server.url,
          [],
          /its TLS certificate is refused: it is signed by a CA this node does not trust/,
        ],
        [`http://127.0.0.1:${port}`, [], /it answers in TLS there; use https:\/\/ \(with --ca\)/],
      ] as const
    ) {
      const t0 = Date.now();
      const joined = await runWgcni([
        "node",
        "join",
        url,
        "--token-file",
        tokenFile,
        "--name",
        "tls-node",
        "--endpoint",
        "192.0.2.9",
        "--key-dir",
        join(dir, "keys"),
        "--state-dir",
        join(dir, "state"),
        ...extra,
      ]);
      assert.equal(joined.code, 1, joined.stderr);
      assert.match(joined.stderr, /^wgcni: Cannot register with /m);
      assert.match(joined.stderr, cause);
      assert.ok(Date.now() - t0 < 15_000, "no retrying");
    }
    // The CLI takes the CA with --ca.
    const listed = await nodeList([
      "--json",
      "--cluster",
      server.url,
      "--token",
      admin,
      "--ca",
      ca,
    ]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(JSON.parse(listed.stdout), []);
  },
});

Deno.test("wgcni cluster token create/list/revoke and node list/remove talk to the API", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await using server = await startServer(dir, POOLS);
  const { admin } = readTokens(dir);
  const api = ["--cluster", server.url];
  const env = { WGCNI_ADMIN_TOKEN: admin };
  const created = await runWgcni(
    ["cluster", "token", "create", "--ttl", "1h", "--single-use", "--json", ...api],
    env,
  );
  assert.equal(created.code, 0, created.stderr);
  const t = JSON.parse(created.stdout);
  assert.equal(t.singleUse, true);
  assert.ok(t.expiresAt > Date.now() + 3_500_000 && t.expiresAt <= Date.now() + 3_600_000);

  const plain = await runWgcni(["cluster", "token", "create", ...api], env);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout.trim(), /^[A-Za-z0-9_-]{43}$/);

  const listed = await runWgcni(["cluster", "token", "list", ...api], env);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /^ID\s+EXPIRES\s+SINGLE-USE\s+USED\s+CREATED/);
  assert.match(
    listed.stdout,
    new RegExp(`^${t.id}\\s+\\S+ \\(in (1h|59m\\d+s)\\)\\s+yes\\s+no`, "m"),
  );
  assert.match(listed.stdout, /^join\s+never\s+no\s+no/m);
  assert.ok(!listed.stdout.includes(plain.stdout.trim()), "a listing shows no token");

  await register(server.url, t.token, "node-a");
  const nodes = await nodeList(api, env);
  assert.equal(nodes.code, 0, nodes.stderr);
  assert.match(
    nodes.stdout,
    /^node-a\s+online\s+-\s+-\s+192\.0\.2\.1:51820\s+10\.128\.\d+\.0\/24,fd00:128:/m,
  );

  const revoked = await runWgcni(["cluster", "token", "revoke", t.id, ...api], env);
  assert.equal(revoked.code, 0, revoked.stderr);
  const again = await runWgcni(["cluster", "token", "revoke", t.id, ...api], env);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /^wgcni: Cannot revoke join token .*: no such token/);

  const removed = await runWgcni(["cluster", "node", "remove", "node-a", ...api], env);
  assert.equal(removed.code, 0, removed.stderr);
  const none = await nodeList(["--json", ...api], env);
  assert.deepEqual(JSON.parse(none.stdout), []);

  const noToken = await runWgcni(["cluster", "token", "list", ...api]);
  assert.equal(noToken.code, 1);
  assert.match(noToken.stderr, /admin token: give --token-file \(or --token\)/);
  const wrong = await runWgcni(["cluster", "token", "list", ...api, "--token", "x".repeat(20)]);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /^wgcni: Cannot authenticate/);
});

Deno.test("wgcni client add writes a wg-quick config that parses and holds only its own key", async (t) => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await using server = await startServer(join(dir, "data"), POOLS);
  const { admin, join: joinToken } = readTokens(join(dir, "data"));
  const nodes = [];
  for (
    const [name, endpoint] of [["node-a", "192.0.2.1:51820"], ["node-b", "[2001:db8::2]:51820"]]
  ) {
    nodes.push(
      await register(server.url, joinToken, name!, endpoint!),
    );
  }
  const api = ["--cluster", server.url, "--token", admin];
  const file = join(dir, "wgc0.conf");
  const added = await runWgcni(["client", "add", "laptop", ...api, "-o", file]);
  assert.equal(added.code, 0, added.stderr);
  assert.equal(added.stdout, "");
  assert.match(added.stderr, /client laptop: 100\.64\.0\.1\/32, fd00:64::1\/128, 2 node peer/);
  assert.equal(Deno.statSync(file).mode! & 0o777, 0o600);
  const text = Deno.readTextFileSync(file);

  // wg-quick insists on root even to strip a file.
  await t.step({
    name: "wg-quick strip parses it",
    ignore: Deno.uid() !== 0 || !WG_QUICK,
    fn: async () => {
      const strip = await new Deno.Command("wg-quick", {
        args: ["strip", file],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(strip.success, new TextDecoder().decode(strip.stderr));
      const stripped = new TextDecoder().decode(strip.stdout);
      assert.match(stripped, /^\[Interface\]$/m);
      assert.equal(stripped.match(/^\[Peer\]$/gm)?.length, 2);
      assert.ok(!/^Address/m.test(stripped), "wg-quick fields are stripped, so they parsed");
    },
  });

  const privateKeys = [...text.matchAll(/^PrivateKey\s*=\s*(\S+)$/gm)].map((m) => m[1]!);
  assert.equal(privateKeys.length, 1, "exactly one private key");
  assert.ok(!/PresharedKey/i.test(text));
  const pub = await new Deno.Command("wg", { args: ["pubkey"], stdin: "piped", stdout: "piped" })
    .spawn();
  const w = pub.stdin.getWriter();
  await w.write(new TextEncoder().encode(privateKeys[0]! + "\n"));
  await w.close();
  const derived = new TextDecoder().decode((await pub.output()).stdout).trim();
  const registered = (await new ClusterClient(server.url, { token: admin }).clients())[0]!;
  assert.equal(derived, registered.publicKey, "the private key is the client's own");
  assert.match(text, /^Address = 100\.64\.0\.1\/32, fd00:64::1\/128$/m);

  const peers = text.split("[Peer]").slice(1);
  assert.equal(peers.length, 2);
  for (const [i, n] of nodes.entries()) {
    assert.ok(peers[i]!.includes(`PublicKey = ${n.node.publicKey}`));
    assert.ok(peers[i]!.includes(`Endpoint = ${n.node.endpoint}`));
    assert.ok(peers[i]!.includes(`AllowedIPs = ${n.node.subnets.join(", ")}`));
  }
  // The node keys appear as public keys only.
  for (const n of nodes) assert.ok(!privateKeys.includes(n.node.publicKey));

  // An existing file is never replaced, and nothing is registered then.
  const again = await runWgcni(["client", "add", "phone", ...api, "-o", file]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /the file exists/);
  assert.equal(Deno.readTextFileSync(file), text);

  const printed = await runWgcni(["client", "add", "phone", ...api]);
  assert.equal(printed.code, 0, printed.stderr);
  assert.match(printed.stdout, /^\[Interface\]\nPrivateKey = /);

  // A node joins later: refreshing the config adds it and keeps the private key.
  const late = await register(server.url, joinToken, "node-c", "192.0.2.3:51820");
  const refreshed = await runWgcni(["client", "refresh", "laptop", "-c", file, ...api]);
  assert.equal(refreshed.code, 0, refreshed.stderr);
  assert.match(refreshed.stderr, /client laptop: 3 node peer\(s\)/);
  const newText = Deno.readTextFileSync(file);
  assert.equal(Deno.statSync(file).mode! & 0o777, 0o600);
  assert.deepEqual(
    [...newText.matchAll(/^PrivateKey\s*=\s*(\S+)$/gm)].map((m) => m[1]),
    privateKeys,
  );
  assert.ok(newText.includes(`PublicKey = ${late.node.publicKey}`));
  assert.equal(newText.split("[Peer]").length - 1, 3);
  // Another client's file is refused and left alone.
  const other = join(dir, "phone.conf");
  Deno.writeTextFileSync(other, printed.stdout, { mode: 0o600 });
  const wrong = await runWgcni(["client", "refresh", "laptop", "-c", other, ...api]);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /holds the key of another client than laptop/);
  assert.equal(Deno.readTextFileSync(other), printed.stdout);

  const listed = await runWgcni(["client", "list", ...api]);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /^laptop\s+100\.64\.0\.1\/32,fd00:64::1\/128\s/m);
  assert.match(listed.stdout, /^phone\s+100\.64\.0\.2\/32/m);
  const removed = await runWgcni(["client", "remove", "laptop", ...api]);
  assert.equal(removed.code, 0, removed.stderr);
  const json = await runWgcni(["client", "list", "--json", ...api]);
  assert.deepEqual(JSON.parse(json.stdout).map((c: { name: string }) => c.name), ["phone"]);
  const gone = await runWgcni(["client", "remove", "laptop", ...api]);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /no such client/);
});

Deno.test("the server expires leases by itself and stops cleanly on SIGTERM with streams open", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const server = await startServer(dir, [
    ...POOLS,
    "--node-lease",
    "1500ms",
    "--subnet-grace",
    "1s",
  ]);
  try {
    const { admin, join: joinToken } = readTokens(dir);
    const api = new ClusterClient(server.url, { token: admin });
    await register(server.url, joinToken, "quiet");
    const stop = new AbortController();
    const events = collect(api.watch(1, stop.signal), 1, 10_000);
    const [gone] = await events;
    assert.equal(gone?.type, "delete");
    assert.ok(gone?.type === "delete" && gone.name === "quiet");
    // The log line follows the commit that the stream already carried.
    for (let i = 0; i < 50 && !/Removed node quiet/.test(server.stderr()); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(server.stderr(), /Removed node quiet: not heard from for 1s500ms/);
    assert.deepEqual(await api.nodes(), []);

    // A stream is open while SIGTERM arrives: the server ends it and exits 0.
    const open = api.watch(undefined, stop.signal);
    assert.equal((await open.next()).value?.type, "snapshot");
    const t0 = performance.now();
    assert.equal(await server.stop("SIGTERM"), 0);
    assert.ok(performance.now() - t0 < 5000);
    assert.deepEqual(await open.next(), { value: undefined, done: true });
    assert.match(server.stderr(), /Shutting down/);
  } finally {
    await server.stop("SIGKILL");
  }
});

Deno.test("time the manager was down does not count against a node's lease", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const args = [...POOLS, "--node-lease", "2s"];
  let credential: string;
  {
    await using server = await startServer(dir, args);
    const { join: joinToken } = readTokens(dir);
    credential = (await register(server.url, joinToken, "patient")).credential;
    assert.equal(await server.stop("SIGTERM"), 0);
  }
  await new Promise((r) => setTimeout(r, 2500));
  await using server = await startServer(dir, args);
  const node = new ClusterClient(server.url, { token: credential });
  await new Promise((r) => setTimeout(r, 1200));
  // Longer than the lease since it was last seen, but the manager was away.
  assert.equal((await node.getNode("patient")).name, "patient");
  await node.heartbeat("patient");
  await new Promise((r) => setTimeout(r, 1200));
  assert.equal((await node.getNode("patient")).name, "patient");
});

Deno.test("tokens come from files, are never printed, and nothing secret is readable by others", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const data = join(dir, "data");
  {
    // Generated on first start: only their paths are shown.
    await using server = await startServer(data, POOLS);
    const tokens = readTokens(data);
    assert.ok(!server.stdout().includes(tokens.admin) && !server.stderr().includes(tokens.admin));
    assert.ok(!server.stdout().includes(tokens.join) && !server.stderr().includes(tokens.join));
    assert.match(server.stdout(), /generated the admin token into \S+admin-token \(mode 0600\)/);
    await register(server.url, tokens.join, "node-a");
    for (
      const f of ["cluster.db", "cluster.db-wal", "cluster.db-shm", "admin-token", "join-token"]
    ) {
      assert.equal(Deno.statSync(join(data, f)).mode! & 0o777, 0o600, f);
    }
  }
  // Given in files (the flags' twins), they replace the generated ones.
  const joinFile = join(dir, "join.txt");
  const adminFile = join(dir, "admin.txt");
  Deno.writeTextFileSync(joinFile, "join-token-from-a-file-0001\n", { mode: 0o600 });
  Deno.writeTextFileSync(adminFile, "admin-token-from-a-file-001\n", { mode: 0o600 });
  await using server = await startServer(data, [
    ...POOLS,
    "--join-token-file",
    joinFile,
    "--admin-token-file",
    adminFile,
  ]);
  const listed = await nodeList(["--json", "--cluster", server.url, "--token-file", adminFile]);
  assert.equal(listed.code, 0, listed.stderr);
  assert.equal(JSON.parse(listed.stdout).length, 1);
  const viaEnv = await nodeList(["--cluster", server.url], {
    WGCNI_ADMIN_TOKEN_FILE: adminFile,
  });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  const both = await nodeList([
    "--cluster",
    server.url,
    "--token-file",
    adminFile,
    "--token",
    "admin-token-from-a-file-001",
  ]);
  assert.equal(both.code, 1);
  assert.match(both.stderr, /Cannot use both --token and --token-file/);
  const missing = await nodeList(["--cluster", server.url, "--token-file", join(dir, "nosuch")]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /Cannot read --token-file \S+nosuch: no such file/);
});

Deno.test("a token is never sent over plain HTTP to a manager off loopback without --insecure", async (t) => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  const tokenFile = join(dir, "token");
  Deno.writeTextFileSync(tokenFile, "some-token-value-0000001\n", { mode: 0o600 });
  // 192.0.2.254 is a documentation address: the refusal comes before any connection.
  const cases: [string, string[]][] = [
    ["client add", ["client", "add", "laptop", "--cluster", "http://192.0.2.254:7443"]],
    ["cluster node list", ["cluster", "node", "list", "--cluster", "http://192.0.2.254:7443"]],
    [
      "node join",
      ["node", "join", "http://127.0.0.1:1,http://192.0.2.254:7443", "--key-dir", dir],
    ],
  ];
  for (const [what, args] of cases) {
    await t.step(what, async () => {
      const r = await runWgcni([...args, "--token-file", tokenFile]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(
        r.stderr,
        /Cannot send a token to http:\/\/192\.0\.2\.254:7443 over plain HTTP/,
      );
      assert.match(r.stderr, /--insecure/);
    });
  }
});

Deno.test("wgcni cluster node reset lets a node that lost its credential register again", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await using server = await startServer(dir, POOLS);
  const { admin, join: joinToken } = readTokens(dir);
  const key = randomKey();
  const first = await new ClusterClient(server.url, { token: joinToken }).register({
    name: "node-a",
    publicKey: key,
    endpoint: "192.0.2.1:51820",
  });
  const again = () =>
    new ClusterClient(server.url, { token: joinToken }).register({
      name: "node-a",
      publicKey: key,
      endpoint: "192.0.2.1:51820",
    });
  await assert.rejects(again(), AuthError);
  const reset = await runWgcni(["cluster", "node", "reset", "node-a", "--cluster", server.url], {
    WGCNI_ADMIN_TOKEN: admin,
  });
  assert.equal(reset.code, 0, reset.stderr);
  assert.match(reset.stdout, /reset node node-a/);
  const back = await again();
  assert.deepEqual(back.node.subnets, first.node.subnets);
});

/** Opens `n` TCP connections to a URL's port (failures count as closed). */
async function openMany(url: string, n: number): Promise<Deno.TcpConn[]> {
  const { hostname, port } = new URL(url);
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < n; i++) {
    try {
      conns.push(await Deno.connect({ hostname, port: Number(port) }));
    } catch {
      // refused or reset: the server is bounding us
    }
  }
  return conns;
}

/** True when the peer has closed the connection (a read ends or fails within `ms`). */
async function closedByPeer(conn: Deno.Conn, ms: number): Promise<boolean> {
  const buf = new Uint8Array(256);
  const timer = setTimeout(() => conn.close(), ms);
  try {
    for (;;) if ((await conn.read(buf)) === null) return true;
  } catch (err) {
    return !(err instanceof Deno.errors.BadResource || err instanceof Deno.errors.Interrupted);
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // closed by the timer or the peer
    }
  }
}

Deno.test({
  name: "slow or idle connections are cut off, and running out of files never stops the server",
  sanitizeResources: false,
  fn: async () => {
    using tmp = tempDir("wgcni-cluster-proc-");
    const dir = tmp.path;
    // A bound above the open-file limit: accepting runs out of descriptors.
    await using server = await startServer(dir, [...POOLS, "--max-connections", "5000"], {
      fdLimit: 256,
    });
    const { admin } = readTokens(dir);
    // A request head that trickles in, a byte every 200 ms...
    const [slow] = await openMany(server.url, 1);
    const t0 = Date.now();
    const trickle = (async () => {
      for (const ch of `GET /v1/nodes HTTP/1.1\r\nAuthorization: Bearer ${admin}\r\nX-Slow: `) {
        try {
          await slow!.write(new TextEncoder().encode(ch));
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    // ...and more idle connections than the process has descriptors.
    const flood = await openMany(server.url, 600);
    const health = () => fetch(`${server.url}/healthz`).then((r) => r.text()).catch(String);
    const closed = await Promise.all(
      [slow!, ...flood].map((c) => closedByPeer(c, 20_000)),
    );
    // All cut off by the head time-out (10 s) or turned away; the server lives on.
    assert.ok(closed.every(Boolean), `${closed.filter((x) => !x).length} were never closed`);
    await trickle;
    assert.ok(Date.now() - t0 < 15_000, `the trickle was cut off after ${Date.now() - t0} ms`);
    assert.match(
      server.stderr(),
      /Cannot accept a connection \(Too many open files.*turning new ones away/,
    );
    assert.equal(await health(), "ok\n");
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /^wgcni_cluster_accept_errors_total [1-9]/m);
    assert.match(metrics, /^wgcni_cluster_connections_refused_total [1-9]/m);
    assert.match(metrics, /^wgcni_cluster_connections_timed_out_total [1-9]/m);
  },
});

Deno.test("an over-long body answers 413 and an over-long URL 414", async () => {
  using tmp = tempDir("wgcni-cluster-proc-");
  const dir = tmp.path;
  await using server = await startServer(dir, POOLS);
  const { join: joinToken } = readTokens(dir);
  const big = await fetch(`${server.url}/v1/nodes`, {
    method: "POST",
    headers: { authorization: `Bearer ${joinToken}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "x".repeat(100_000) }),
  });
  assert.equal(big.status, 413);
  assert.match((await big.json()).error, /the body is over 65536 bytes/);
  const long = await fetch(`${server.url}/v1/nodes/${"a".repeat(10_000)}`);
  assert.equal(long.status, 414);
  await long.body?.cancel();
  assert.equal(await (await fetch(`${server.url}/healthz`)).text(), "ok\n");
});
