import assert from "node:assert/strict";
import { createLocalApp, type LocalHandlers, MAX_LOCAL_BODY } from "../../lib/api/local_app.ts";
import type { CniRequest } from "../../lib/api/local_types.ts";
import { CniError } from "../../lib/cni/errors.ts";
import { ConflictError, NotFoundError, PoolExhaustedError } from "../../lib/errors.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { serveOnSocket } from "./_unix_serve.ts";

function fakeHandlers(overrides: Partial<LocalHandlers> = {}) {
  const calls: string[] = [];
  const h: LocalHandlers = {
    add: (req) => {
      calls.push(`add ${req.containerId}/${req.ifname}`);
      if (req.containerId === "dup") return Promise.reject(new CniError(100, "already attached"));
      return Promise.resolve({ cniVersion: "1.1.0", ips: [{ address: "10.244.0.2/32" }] });
    },
    del: (req) => {
      calls.push(`del ${req.containerId}`);
      return Promise.resolve();
    },
    check: () => Promise.resolve(),
    status: () => Promise.resolve(undefined),
    gc: (valid) => {
      calls.push(`gc ${JSON.stringify(valid)}`);
      return Promise.resolve({ released: [], failed: [] });
    },
    node: () => Promise.resolve({ name: "n1" }),
    peers: () => Promise.resolve({ peers: [] }),
    allocations: () => Promise.resolve({ pods: [] }),
    workloads: {
      allocate: (name) => {
        calls.push(`allocate ${name}`);
        if (name === "full") return Promise.reject(new PoolExhaustedError("no address left"));
        return Promise.resolve({ name, addresses: ["10.244.0.9/32"], created: true });
      },
      register: (name, key) => {
        calls.push(`register ${name} ${key.endpointPort ?? "-"}`);
        if (name === "taken") return Promise.reject(new ConflictError("is the node's own key"));
        if (name === "ghost") return Promise.reject(new NotFoundError("allocate them first"));
        return Promise.resolve({
          name,
          phase: "ready",
          addresses: ["10.244.0.9/32"],
          publicKey: key.publicKey,
        });
      },
      peers: (name) => {
        calls.push(`peers ${name}`);
        return Promise.resolve({ name, addresses: [], mtu: 1420, peers: [], clusterCidrs: [] });
      },
      release: (name) => {
        calls.push(`release ${name}`);
        return Promise.resolve({ name, released: true });
      },
      list: () => Promise.resolve([]),
    },
  };
  const app = createLocalApp(
    { ...h, ...overrides },
    (err) =>
      err instanceof CniError
        ? { status: 500, body: { code: err.code, msg: err.message } }
        : { status: 500, body: { code: 100, msg: String(err) } },
  );
  return { app, calls };
}

const ok: CniRequest = {
  containerId: "c1",
  ifname: "eth0",
  netns: "/run/netns/p1",
  args: {},
  config: { cniVersion: "1.1.0", name: "wgcni" },
};

const post = (path: string, body: string) =>
  new Request(`http://wgcni.local${path}`, { method: "POST", body });

Deno.test("the local API answers ADD with the result and DEL with {}", async () => {
  const { app, calls } = fakeHandlers();
  const add = await app.request(post("/v1/cni/add", JSON.stringify(ok)));
  assert.equal(add.status, 200);
  assert.deepEqual(await add.json(), {
    result: { cniVersion: "1.1.0", ips: [{ address: "10.244.0.2/32" }] },
  });
  const del = await app.request(post("/v1/cni/del", JSON.stringify(ok)));
  assert.deepEqual(await del.json(), {});
  assert.deepEqual(calls, ["add c1/eth0", "del c1"]);
});

Deno.test("bad requests get CNI error bodies and reach no handler", async () => {
  const cases: [string, number, RegExp][] = [
    ["{not json", 6, /invalid JSON/],
    [JSON.stringify({ ...ok, extra: 1 }), 2, /Unsupported field.*extra/],
    [JSON.stringify({ ...ok, ifname: 5 }), 7, /ifname/],
    [JSON.stringify({ containerId: "c1" }), 7, /Invalid request/],
  ];
  for (const [body, code, msg] of cases) {
    const { app, calls } = fakeHandlers();
    const r = await app.request(post("/v1/cni/add", body));
    assert.equal(r.status, 400, body.slice(0, 40));
    const b = await r.json() as { code: number; msg: string };
    assert.equal(b.code, code);
    assert.match(b.msg, msg);
    assert.deepEqual(calls, []);
  }
});

Deno.test("handler errors pass through as CNI errors", async () => {
  const { app } = fakeHandlers();
  const r = await app.request(post("/v1/cni/add", JSON.stringify({ ...ok, containerId: "dup" })));
  assert.equal(r.status, 500);
  assert.deepEqual(await r.json(), { code: 100, msg: "already attached" });
});

Deno.test("GC reads valid-attachments (or the older key); absent means release nothing", async () => {
  for (
    const [config, expected] of [
      [
        { "cni.dev/valid-attachments": [{ containerID: "a", ifname: "eth0" }] },
        '[{"containerId":"a","ifname":"eth0"}]',
      ],
      [{ "cni.dev/attachments": [] }, "[]"],
      [{}, "undefined"],
    ] as const
  ) {
    const { app, calls } = fakeHandlers();
    const r = await app.request(
      post("/v1/cni/gc", JSON.stringify({ ...ok, config: { ...ok.config, ...config } })),
    );
    assert.equal(r.status, 200);
    assert.deepEqual(calls, [`gc ${expected}`]);
  }
  const { app } = fakeHandlers();
  const bad = await app.request(
    post("/v1/cni/gc", JSON.stringify({ ...ok, config: { "cni.dev/valid-attachments": "x" } })),
  );
  assert.equal(bad.status, 400);
});

Deno.test("STATUS is 200 when ready and 503 with the code otherwise", async () => {
  const { app } = fakeHandlers();
  const ready = await app.request(post("/v1/cni/status", "{}"));
  assert.equal(ready.status, 200);
  assert.deepEqual(await ready.json(), { ready: true });
  const { app: down } = fakeHandlers({
    status: () => Promise.resolve({ code: 50, msg: "interface missing" }),
  });
  const r = await down.request(post("/v1/cni/status", "{}"));
  assert.equal(r.status, 503);
  assert.deepEqual(await r.json(), { code: 50, msg: "interface missing" });
});

Deno.test("the local API refuses the ids, names and paths the plugin refuses, with code 4", async () => {
  const cases: [string, Partial<CniRequest>, RegExp][] = [
    ["add", { containerId: "../../etc" }, /containerId "\.\.\/\.\.\/etc"/],
    ["add", { containerId: "" }, /containerId "": it is empty/],
    ["add", { containerId: "a".repeat(257) }, /containerId .*longer than 256 bytes/],
    ["add", { containerId: "-x" }, /containerId/],
    ["add", { ifname: "" }, /ifname/],
    ["add", { ifname: "../x" }, /ifname/],
    ["add", { ifname: "a".repeat(16) }, /ifname/],
    ["add", { netns: "" }, /netns "": expected an absolute path/],
    ["add", { netns: "p1" }, /netns/],
    ["check", { containerId: "a/b" }, /containerId/],
    ["check", { netns: "relative" }, /netns/],
    ["del", { containerId: "../../etc" }, /containerId/],
    ["del", { containerId: "" }, /containerId/],
    ["del", { ifname: "." }, /ifname/],
  ];
  for (const [verb, patch, msg] of cases) {
    const { app, calls } = fakeHandlers();
    const r = await app.request(post(`/v1/cni/${verb}`, JSON.stringify({ ...ok, ...patch })));
    const b = await r.json() as { code: number; msg: string };
    assert.equal(r.status, 400, `${verb} ${JSON.stringify(patch)}`);
    assert.equal(b.code, 4, `${verb} ${JSON.stringify(patch)}: ${b.msg}`);
    assert.match(b.msg, msg);
    assert.deepEqual(calls, []);
  }
  // DEL needs no netns; GC names no attachment.
  const { app, calls } = fakeHandlers();
  const del = await app.request(post("/v1/cni/del", JSON.stringify({ ...ok, netns: "" })));
  assert.equal(del.status, 200);
  const gc = await app.request(
    post("/v1/cni/gc", JSON.stringify({ ...ok, containerId: "", ifname: "", netns: "" })),
  );
  assert.equal(gc.status, 200);
  assert.deepEqual(calls, ["del c1", "gc undefined"]);
});

Deno.test("the local API refuses an invalid prevResult on ADD and CHECK with code 7", async () => {
  const garbage: unknown[] = [
    { ips: [{ address: "999.1.1.1/32" }] },
    { interfaces: [{ name: "eth0" }], ips: [{ address: "10.0.0.1/32", interface: -5 }] },
    { interfaces: [{ name: 5 }] },
    { routes: [{ dst: "0.0.0.0/0", gw: "::1" }] },
    { dns: { nameservers: [7] } },
    "text",
  ];
  for (const verb of ["add", "check"]) {
    for (const prevResult of garbage) {
      const { app, calls } = fakeHandlers();
      const body = { ...ok, config: { ...ok.config, prevResult } };
      const r = await app.request(post(`/v1/cni/${verb}`, JSON.stringify(body)));
      const b = await r.json() as { code: number; msg: string };
      assert.equal(r.status, 400, JSON.stringify(prevResult));
      assert.equal(b.code, 7, JSON.stringify(prevResult));
      assert.match(b.msg, /^Invalid prevResult: /);
      assert.deepEqual(calls, []);
    }
  }
  // A valid one reaches the handler in canonical shape.
  let seen: unknown;
  const { app } = fakeHandlers({
    check: (req) => {
      seen = req.config.prevResult;
      return Promise.resolve();
    },
  });
  const prevResult = { cniVersion: "0.4.0", ips: [{ version: "4", address: "10.0.0.1/32" }] };
  const r = await app.request(
    post("/v1/cni/check", JSON.stringify({ ...ok, config: { ...ok.config, prevResult } })),
  );
  assert.equal(r.status, 200);
  assert.deepEqual(seen, { cniVersion: "1.1.0", ips: [{ address: "10.0.0.1/32" }] });
});

/** A body of `total` bytes in 64 KiB chunks, counting what the reader pulled. */
function countingBody(total: number) {
  const chunk = new Uint8Array(64 * 1024).fill(0x20);
  const seen = { pulled: 0 };
  const body = new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (seen.pulled >= total) return ctl.close();
      seen.pulled += chunk.length;
      ctl.enqueue(chunk.slice());
    },
  });
  return { body, seen };
}

Deno.test("an over-long body is 413 and read no further than the cap, chunked or not", async () => {
  for (const verb of ["add", "del", "check", "gc"]) {
    const { app, calls } = fakeHandlers();
    const { body, seen } = countingBody(64 * 1024 * 1024);
    const r = await app.request(
      new Request(`http://wgcni.local/v1/cni/${verb}`, { method: "POST", body }),
    );
    assert.equal(r.status, 413, verb);
    const b = await r.json() as { code: number; msg: string };
    assert.equal(b.code, 5);
    assert.match(b.msg, /larger than 1048576 bytes/);
    assert.ok(seen.pulled <= MAX_LOCAL_BODY + 128 * 1024, `${verb} read ${seen.pulled} bytes`);
    assert.deepEqual(calls, []);
  }
  const { app, calls } = fakeHandlers();
  const r = await app.request(post("/v1/cni/add", "x".repeat(MAX_LOCAL_BODY + 1)));
  assert.equal(r.status, 413);
  assert.deepEqual(calls, []);
  const exact = JSON.stringify(ok).padEnd(MAX_LOCAL_BODY, " ");
  assert.equal((await app.request(post("/v1/cni/add", exact))).status, 200, "the cap itself fits");
});

Deno.test("on a real unix socket, a 64 MiB chunked body is answered 413 without being read whole", async () => {
  const { app, calls } = fakeHandlers();
  await using served = await serveOnSocket(app.fetch);
  const { path } = served;
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    const enc = new TextEncoder();
    await conn.write(enc.encode(
      "POST /v1/cni/add HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n",
    ));
    const chunk = enc.encode(`4000\r\n${" ".repeat(0x4000)}\r\n`);
    let sent = 0;
    const sending = (async () => {
      try {
        while (sent < 64 * 1024 * 1024) {
          await conn.write(chunk);
          sent += 0x4000;
        }
      } catch {
        // The server closed the connection after answering.
      }
    })();
    const buf = new Uint8Array(4096);
    const n = await conn.read(buf);
    const answer = new TextDecoder().decode(buf.subarray(0, n ?? 0));
    assert.match(answer, /^HTTP\/1\.1 413 /);
    assert.match(answer, /larger than 1048576 bytes/);
    assert.ok(sent < 16 * 1024 * 1024, `the answer came after ${sent} bytes`);
    conn.close();
    await sending;
    assert.deepEqual(calls, []);
  } finally {
    try {
      conn.close();
    } catch { /* closed above */ }
  }
});

const KEY = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const put = (path: string, body: string) =>
  new Request(`http://wgcni.local${path}`, { method: "PUT", body });

Deno.test("the workload steps answer 200 with their bodies, each its own call", async () => {
  const { app, calls } = fakeHandlers();
  const a = await app.request(post("/v1/workloads/vm-1/addresses", ""));
  assert.equal(a.status, 200);
  assert.deepEqual(await a.json(), { name: "vm-1", addresses: ["10.244.0.9/32"], created: true });
  const r = await app.request(
    put("/v1/workloads/vm-1/key", JSON.stringify({ publicKey: KEY, endpointPort: 40001 })),
  );
  assert.equal(r.status, 200);
  assert.equal((await r.json() as { publicKey: string }).publicKey, KEY);
  assert.equal((await app.request(`http://wgcni.local/v1/workloads/vm-1/peers`)).status, 200);
  const d = await app.request(
    new Request("http://wgcni.local/v1/workloads/vm-1", { method: "DELETE" }),
  );
  assert.deepEqual(await d.json(), { name: "vm-1", released: true });
  assert.deepEqual(calls, ["allocate vm-1", "register vm-1 40001", "peers vm-1", "release vm-1"]);
});

Deno.test("bad workload names, keys and ports are 400 and reach no handler", async () => {
  const lowOrder = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
  const cases: [Request, RegExp][] = [
    [post("/v1/workloads/VM/addresses", ""), /Invalid workload name "VM": must be lowercase/],
    [post("/v1/workloads/-x/addresses", ""), /not a DNS label/],
    [put("/v1/workloads/vm/key", "{nope"), /invalid JSON/],
    [put("/v1/workloads/vm/key", JSON.stringify({ publicKey: "abc" })), /publicKey: must be/],
    [put("/v1/workloads/vm/key", JSON.stringify({ publicKey: lowOrder })), /low-order/],
    [
      put("/v1/workloads/vm/key", JSON.stringify({ publicKey: KEY, endpointPort: 0 })),
      /endpointPort: must be 1 to 65535/,
    ],
    [
      put("/v1/workloads/vm/key", JSON.stringify({ publicKey: KEY, endpointPort: 1.5 })),
      /endpointPort: must be a whole number/,
    ],
    [
      put("/v1/workloads/vm/key", JSON.stringify({ publicKey: KEY, privateKey: KEY })),
      /Unsupported field in the request: privateKey/,
    ],
  ];
  for (const [req, msg] of cases) {
    const { app, calls } = fakeHandlers();
    const r = await app.request(req);
    assert.equal(r.status, 400, req.url);
    const body = await r.json() as { error: string };
    assert.match(body.error, msg);
    assert.ok(!body.error.includes(KEY), "no key echoed");
    assert.deepEqual(calls, [], req.url);
  }
  const { app } = fakeHandlers();
  const big = await app.request(put("/v1/workloads/vm/key", "x".repeat(MAX_LOCAL_BODY + 1)));
  assert.equal(big.status, 413);
});

Deno.test("workload errors get their status: 409 collision, 404 unknown, 503 no address", async () => {
  const { app } = fakeHandlers();
  const cases: [Request, number, string][] = [
    [put("/v1/workloads/taken/key", JSON.stringify({ publicKey: KEY })), 409, "ConflictError"],
    [put("/v1/workloads/ghost/key", JSON.stringify({ publicKey: KEY })), 404, "NotFoundError"],
    [post("/v1/workloads/full/addresses", ""), 503, "PoolExhaustedError"],
  ];
  for (const [req, status, code] of cases) {
    const r = await app.request(req);
    assert.equal(r.status, status, req.url);
    assert.equal((await r.json() as { code: string }).code, code);
  }
});

Deno.test("the local client runs the workload steps over a unix socket and rebuilds errors", async () => {
  const { app, calls } = fakeHandlers();
  await using served = await serveOnSocket(app.fetch);
  const { path } = served;
  const c = createLocalClient(path);
  try {
    assert.equal((await c.workloads.allocate("vm-2")).created, true);
    assert.equal((await c.workloads.register("vm-2", { publicKey: KEY })).phase, "ready");
    assert.equal((await c.workloads.peers("vm-2")).mtu, 1420);
    assert.equal((await c.workloads.release("vm-2")).released, true);
    assert.deepEqual(await c.workloads.list(), []);
    await assert.rejects(c.workloads.register("taken", { publicKey: KEY }), ConflictError);
    await assert.rejects(c.workloads.register("ghost", { publicKey: KEY }), NotFoundError);
    await assert.rejects(c.workloads.allocate("Bad"), TypeError);
    assert.deepEqual(calls.slice(0, 4), [
      "allocate vm-2",
      "register vm-2 -",
      "peers vm-2",
      "release vm-2",
    ]);
  } finally {
    c.close();
  }
});

Deno.test("a node manager without workload handlers answers their paths 404", async () => {
  const { app: full } = fakeHandlers();
  assert.equal((await full.request("http://wgcni.local/v1/workloads")).status, 200);
  const h: LocalHandlers = {
    add: () => Promise.reject(new Error("no")),
    del: () => Promise.resolve(),
    check: () => Promise.resolve(),
    status: () => Promise.resolve(undefined),
    gc: () => Promise.resolve({ released: [], failed: [] }),
    node: () => Promise.resolve({}),
    peers: () => Promise.resolve({}),
    allocations: () => Promise.resolve({}),
  };
  const app = createLocalApp(h, () => ({ status: 500, body: { code: 100, msg: "x" } }));
  const r = await app.request(post("/v1/workloads/vm-1/addresses", ""));
  assert.equal(r.status, 404);
  assert.match((await r.json() as { error: string }).error, /attaches no workloads/);
});

Deno.test("rotate-key: the rotation's answer, 409 while one is under way, 400 for a bad lead, 404 without it", async () => {
  const asked: (number | undefined)[] = [];
  const { app } = fakeHandlers({
    rotateKey: (leadMs) => {
      asked.push(leadMs);
      if (leadMs === 9_000) return Promise.reject(new ConflictError("a rotation is under way"));
      return Promise.resolve({ from: "a", to: "b", switchAt: 1, pods: 2, workloads: 0 });
    },
  });
  const r = await app.fetch(post("/v1/node/rotate-key", ""));
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { from: "a", to: "b", switchAt: 1, pods: 2, workloads: 0 });
  assert.equal((await app.fetch(post("/v1/node/rotate-key", '{"leadMs":2000}'))).status, 200);
  const busy = await app.fetch(post("/v1/node/rotate-key", '{"leadMs":9000}'));
  assert.equal(busy.status, 409);
  assert.match((await busy.json()).error, /under way/);
  for (
    const [body, message] of [
      ['{"leadMs":10}', /leadMs: must be at least 1000/],
      ['{"leadMs":"5s"}', /Invalid leadMs/],
      ['{"lead":1}', /Unsupported field in the request: lead/],
      ["{", /invalid JSON/],
    ] as const
  ) {
    const res = await app.fetch(post("/v1/node/rotate-key", body));
    assert.equal(res.status, 400, body);
    assert.match((await res.json()).error, message);
  }
  assert.deepEqual(asked, [undefined, 2000, 9000]);
  const { app: without } = fakeHandlers();
  const none = await without.fetch(post("/v1/node/rotate-key", ""));
  assert.equal(none.status, 404);
});
