import assert from "node:assert/strict";
import { createLocalApp, type LocalHandlers, MAX_LOCAL_BODY } from "../../lib/api/local_app.ts";
import type { CniRequest } from "../../lib/api/local_types.ts";
import { CniError } from "../../lib/cni/errors.ts";

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
    ["x".repeat(MAX_LOCAL_BODY + 1), 5, /larger than/],
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
