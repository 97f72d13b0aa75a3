/** The plugin's protocol, line by line of the CNI behaviour, without processes. */
import assert from "node:assert/strict";
import { type NodeReply, type PluginIo, pluginMain } from "../../modes/cni/main.ts";
import type { ByteReader } from "../../modes/cni/unix_http.ts";
import type { CniRequest } from "../../lib/api/local_types.ts";

const VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const RESULT = {
  cniVersion: "1.1.0",
  interfaces: [{ name: "eth0", mtu: 1420, sandbox: "/run/netns/p" }],
  ips: [{ address: "10.244.0.2/32", interface: 0 }, { address: "fd00::2/128", interface: 0 }],
  routes: [{ dst: "0.0.0.0/0", mtu: 1400 }, { dst: "::/0" }],
  dns: {},
};

interface Run {
  code: number;
  out: Record<string, unknown> | undefined;
  stdout: string;
  calls: { path: string; body: CniRequest }[];
}

/** Hands out `bytes` at most `chunk` at a time, as a pipe may. */
function chunkedReader(bytes: Uint8Array, chunk: number): ByteReader {
  let off = 0;
  return {
    read(p) {
      if (off >= bytes.length) return Promise.resolve(null);
      const n = Math.min(chunk, p.length, bytes.length - off);
      p.set(bytes.subarray(off, off + n));
      off += n;
      return Promise.resolve(n);
    },
  };
}

async function plugin(
  env: Record<string, string>,
  stdin: string | Uint8Array,
  reply: (path: string) => NodeReply = (path) =>
    path.endsWith("/add") ? { status: 200, body: { result: RESULT } } : { status: 200, body: {} },
  netnsExists = true,
): Promise<Run> {
  let stdout = "";
  const calls: Run["calls"] = [];
  const bytes = typeof stdin === "string" ? new TextEncoder().encode(stdin) : stdin;
  const io: PluginIo = {
    env: (n) => env[n],
    stdin: chunkedReader(bytes, 1000),
    stdout: (t) => stdout += t,
    stderr: () => {},
    call: (_socket, path, body) => {
      calls.push({ path, body });
      return Promise.resolve(reply(path));
    },
    netnsExists: () => netnsExists,
  };
  const code = await pluginMain(io);
  return { code, out: stdout ? JSON.parse(stdout) : undefined, stdout, calls };
}

const env = (command: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: "c0ffee",
  CNI_NETNS: "/run/netns/p",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
  ...extra,
});
const conf = (version: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: version, name: "wgcni", type: "wgcni", ...extra });

Deno.test("VERSION answers with empty stdin or a config, and code 1 for an unknown version", async () => {
  for (const stdin of ["", conf("0.4.0"), '{"cniVersion":"1.0.0"}']) {
    const r = await plugin({ CNI_COMMAND: "VERSION" }, stdin);
    assert.equal(r.code, 0);
    assert.deepEqual(r.out?.supportedVersions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
  }
  const bad = await plugin({ CNI_COMMAND: "VERSION" }, conf("9.9.9"));
  assert.equal(bad.code, 1);
  assert.equal(bad.out?.code, 1);
  assert.match(String(bad.out?.details), /1\.1\.0/);
});

Deno.test("ADD's result comes in exactly the requested version", async () => {
  for (const v of VERSIONS) {
    const r = await plugin(env("ADD"), conf(v));
    assert.equal(r.code, 0, r.stdout);
    const out = r.out as {
      cniVersion: string;
      ips: Record<string, unknown>[];
      routes: Record<string, unknown>[];
      interfaces: Record<string, unknown>[];
    };
    assert.equal(out.cniVersion, v);
    const old = v === "0.3.1" || v === "0.4.0";
    assert.deepEqual(out.ips.map((ip) => ip.version), old ? ["4", "6"] : [undefined, undefined]);
    assert.equal(out.ips[0]?.interface, 0);
    assert.equal(out.interfaces[0]?.sandbox, "/run/netns/p");
    assert.equal(out.routes[0]?.mtu, v === "1.1.0" ? 1400 : undefined);
    assert.equal(out.interfaces[0]?.mtu, v === "1.1.0" ? 1420 : undefined);
    assert.equal(r.calls[0]?.path, "/v1/cni/add");
    assert.deepEqual(r.calls[0]?.body.containerId, "c0ffee");
  }
});

Deno.test("missing variables give code 4 naming every one, before any call", async () => {
  const cases: [string, string[], RegExp][] = [
    [
      "ADD",
      ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
      /CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME/,
    ],
    ["CHECK", ["CNI_NETNS"], /Missing environment variables: CNI_NETNS$/],
    ["DEL", ["CNI_CONTAINERID", "CNI_IFNAME"], /CNI_CONTAINERID, CNI_IFNAME/],
  ];
  for (const [cmd, drop, re] of cases) {
    const e: Record<string, string> = env(cmd);
    for (const d of drop) delete e[d];
    const r = await plugin(e, conf("1.0.0"));
    assert.equal(r.code, 1);
    assert.equal(r.out?.code, 4);
    assert.match(String(r.out?.msg), re);
    assert.equal(r.calls.length, 0);
  }
  const delNoNetns: Record<string, string> = env("DEL");
  delete delNoNetns.CNI_NETNS;
  assert.equal((await plugin(delNoNetns, conf("1.0.0"))).code, 0, "DEL needs no NETNS");
});

Deno.test("bad CONTAINERID, IFNAME and COMMAND give code 4", async () => {
  const bad: Record<string, string>[] = [
    { CNI_CONTAINERID: "-leading" },
    { CNI_CONTAINERID: "has space" },
    { CNI_CONTAINERID: "a/b" },
    { CNI_IFNAME: "." },
    { CNI_IFNAME: ".." },
    { CNI_IFNAME: "a".repeat(16) },
    { CNI_IFNAME: "et/h0" },
    { CNI_IFNAME: "eth:0" },
    { CNI_IFNAME: "eth 0" },
    { CNI_NETNS: "run/netns/p" },
    { CNI_COMMAND: "FROB" },
  ];
  for (const extra of bad) {
    const r = await plugin(env("ADD", extra), conf("1.0.0"));
    assert.equal(r.out?.code, 4, JSON.stringify(extra));
    assert.equal(r.calls.length, 0);
  }
  assert.equal((await plugin(env("ADD", { CNI_IFNAME: "a".repeat(15) }), conf("1.0.0"))).code, 0);
});

Deno.test("invalid JSON is code 6; missing or mistyped fields code 7", async () => {
  assert.equal((await plugin(env("ADD"), "{nope")).out?.code, 6);
  for (
    const stdin of [
      "[]",
      '{"name":"wgcni"}',
      '{"cniVersion":"1.0.0"}',
      '{"cniVersion":1,"name":"x"}',
      '{"cniVersion":"1.0.0","name":5}',
      '{"cniVersion":"1.0.0","name":"x","socket":3}',
    ]
  ) {
    const r = await plugin(env("ADD"), stdin);
    assert.equal(r.out?.code, 7, stdin);
    assert.equal(r.calls.length, 0);
  }
});

Deno.test("an unsupported config version is code 1 with the supported list", async () => {
  const r = await plugin(env("ADD"), conf("2.0.0"));
  assert.equal(r.out?.code, 1);
  assert.match(String(r.out?.details), /0\.3\.1, 0\.4\.0, 1\.0\.0, 1\.1\.0/);
});

Deno.test("commands are refused in versions that lack them", async () => {
  for (const [cmd, v] of [["CHECK", "0.3.1"], ["STATUS", "1.0.0"], ["GC", "0.4.0"]]) {
    const r = await plugin(env(cmd as string), conf(v as string));
    assert.equal(r.out?.code, 1, `${cmd} at ${v}`);
  }
  assert.equal((await plugin(env("CHECK"), conf("0.4.0"))).code, 0);
  assert.equal((await plugin({ CNI_COMMAND: "STATUS" }, conf("1.1.0"))).code, 0);
  assert.equal((await plugin({ CNI_COMMAND: "GC" }, conf("1.1.0"))).code, 0);
});

Deno.test("CNI_ARGS: unknown keys are an error unless IgnoreUnknown; kubelet's keys pass", async () => {
  const unknown = await plugin(env("ADD", { CNI_ARGS: "FOO=bar" }), conf("1.0.0"));
  assert.equal(unknown.out?.code, 4);
  assert.match(String(unknown.out?.msg), /Unknown CNI_ARGS: FOO/);
  const kube = await plugin(
    env("ADD", { CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;FOO=bar" }),
    conf("1.0.0"),
  );
  assert.equal(kube.code, 0);
  assert.deepEqual(kube.calls[0]?.body.args, { K8S_POD_NAMESPACE: "ns", K8S_POD_NAME: "web" });
  assert.equal((await plugin(env("ADD", { CNI_ARGS: "novalue" }), conf("1.0.0"))).out?.code, 4);
});

Deno.test("a config read a byte at a time arrives whole, multi-byte characters included", async () => {
  const calls: CniRequest[] = [];
  let stdout = "";
  const text = conf("1.0.0", { name: "réseau-☃" });
  const vars: Record<string, string> = env("ADD");
  const code = await pluginMain({
    env: (n) => vars[n],
    stdin: chunkedReader(new TextEncoder().encode(text), 1),
    stdout: (t) => stdout += t,
    stderr: () => {},
    call: (_socket, _path, body) => {
      calls.push(body);
      return Promise.resolve({ status: 200, body: { result: RESULT } });
    },
    netnsExists: () => true,
  });
  assert.equal(code, 0, stdout);
  assert.equal(calls.length, 1);
  assert.equal(calls[0]?.config.name, "réseau-☃");
});

Deno.test("stdin over the cap is a coded error with no call", async () => {
  const t0 = performance.now();
  const r = await plugin(env("ADD"), new Uint8Array(5 * 1024 * 1024).fill(32));
  assert.equal(r.out?.code, 5);
  assert.match(String(r.out?.msg), /larger than/);
  assert.equal(r.calls.length, 0);
  assert.ok(performance.now() - t0 < 2000);
});

Deno.test("prevResult is forwarded in 1.1.0 shape", async () => {
  const prev = {
    cniVersion: "0.4.0",
    interfaces: [{ name: "eth0", sandbox: "/run/netns/p" }],
    ips: [{ version: "4", address: "10.244.0.2/32", interface: 0 }],
  };
  const r = await plugin(env("CHECK"), conf("0.4.0", { prevResult: prev }));
  assert.equal(r.code, 0);
  const fwd = r.calls[0]?.body.config.prevResult as { ips: Record<string, unknown>[] };
  assert.deepEqual(fwd.ips, [{ address: "10.244.0.2/32", interface: 0 }]);
  const bad = await plugin(env("CHECK"), conf("0.4.0", { prevResult: { ips: [{ address: 5 }] } }));
  assert.equal(bad.out?.code, 7);
});

Deno.test("the node manager's errors are printed as given, on stdout, with cniVersion", async () => {
  const r = await plugin(env("ADD"), conf("0.4.0"), () => ({
    status: 500,
    body: { code: 101, msg: "Cannot allocate from 10.244.0.0/24: pool is exhausted" },
  }));
  assert.equal(r.code, 1);
  assert.deepEqual(r.out, {
    cniVersion: "0.4.0",
    code: 101,
    msg: "Cannot allocate from 10.244.0.0/24: pool is exhausted",
  });
});

Deno.test("with the node manager away: ADD 11, STATUS 50, DEL succeeds only when nothing is left", async () => {
  const away = () => ({ unreachable: "connection refused" });
  assert.equal((await plugin(env("ADD"), conf("1.0.0"), away)).out?.code, 11);
  assert.equal((await plugin(env("CHECK"), conf("1.0.0"), away)).out?.code, 11);
  assert.equal((await plugin({ CNI_COMMAND: "STATUS" }, conf("1.1.0"), away)).out?.code, 50);
  assert.equal((await plugin({ CNI_COMMAND: "GC" }, conf("1.1.0"), away)).out?.code, 11);
  assert.equal((await plugin(env("DEL", { CNI_NETNS: "" }), conf("1.0.0"), away)).code, 0);
  assert.equal((await plugin(env("DEL"), conf("1.0.0"), away, false)).code, 0, "netns gone");
  assert.equal((await plugin(env("DEL"), conf("1.0.0"), away, true)).out?.code, 11, "netns alive");
});

Deno.test("GC failures are reported with their details", async () => {
  const r = await plugin({ CNI_COMMAND: "GC" }, conf("1.1.0"), () => ({
    status: 200,
    body: { released: [], failed: [{ containerId: "a", ifname: "eth0", msg: "busy" }] },
  }));
  assert.equal(r.out?.code, 100);
  assert.match(String(r.out?.details), /a\/eth0: busy/);
});

Deno.test("a CNI_CONTAINERID longer than 256 bytes is an invalid variable (code 4) for ADD, DEL and CHECK", async () => {
  for (const cmd of ["ADD", "DEL", "CHECK"]) {
    const r = await plugin(env(cmd, { CNI_CONTAINERID: "a".repeat(257) }), conf("1.0.0"));
    assert.equal(r.out?.code, 4, cmd);
    assert.match(String(r.out?.msg), /CNI_CONTAINERID.*longer than 256/);
    assert.equal(r.calls.length, 0);
  }
  assert.equal(
    (await plugin(env("ADD", { CNI_CONTAINERID: "a".repeat(256) }), conf("1.0.0"))).code,
    0,
  );
});

/** prevResult values a chained plugin (or a broken runtime) could pass, each invalid. */
const GARBAGE_PREV: [string, unknown, RegExp][] = [
  ["not an object", "x", /prevResult/],
  ["an array", [], /prevResult/],
  ["ips not a list", { ips: {} }, /ips/],
  ["address out of range", { ips: [{ address: "999.1.1.1/32" }] }, /ips\[0\]\.address/],
  ["address without prefix", { ips: [{ address: "10.0.0.1" }] }, /ips\[0\]\.address/],
  ["prefix too long", { ips: [{ address: "10.0.0.1/33" }] }, /ips\[0\]\.address/],
  ["IPv6 prefix too long", { ips: [{ address: "fd00::1/129" }] }, /ips\[0\]\.address/],
  ["address a number", { ips: [{ address: 5 }] }, /ips\[0\]\.address/],
  ["negative interface", {
    interfaces: [{ name: "eth0" }],
    ips: [{ address: "10.0.0.1/32", interface: -5 }],
  }, /ips\[0\]\.interface/],
  ["interface beyond the list", {
    interfaces: [{ name: "eth0" }],
    ips: [{ address: "10.0.0.1/32", interface: 1 }],
  }, /ips\[0\]\.interface/],
  ["interface not a whole number", {
    interfaces: [{ name: "eth0" }],
    ips: [{ address: "10.0.0.1/32", interface: 0.5 }],
  }, /ips\[0\]\.interface/],
  ["gateway not an address", {
    ips: [{ address: "10.0.0.1/32", gateway: "nope" }],
  }, /ips\[0\]\.gateway/],
  ["gateway of the other family", {
    ips: [{ address: "10.0.0.1/32", gateway: "fd00::1" }],
  }, /ips\[0\]\.gateway/],
  ["version not matching the address", {
    ips: [{ version: "6", address: "10.0.0.1/32" }],
  }, /ips\[0\]\.version/],
  ["interface name a number", { interfaces: [{ name: 5 }] }, /interfaces\[0\]\.name/],
  ["interface name empty", { interfaces: [{ name: "" }] }, /interfaces\[0\]\.name/],
  ["interface mtu negative", { interfaces: [{ name: "eth0", mtu: -1 }] }, /interfaces\[0\]\.mtu/],
  [
    "interface mac not a string",
    { interfaces: [{ name: "eth0", mac: 1 }] },
    /interfaces\[0\]\.mac/,
  ],
  ["interface sandbox not a string", {
    interfaces: [{ name: "eth0", sandbox: {} }],
  }, /interfaces\[0\]\.sandbox/],
  ["route dst missing", { routes: [{ gw: "10.0.0.1" }] }, /routes\[0\]\.dst/],
  ["route dst garbage", { routes: [{ dst: "300.0.0.0/8" }] }, /routes\[0\]\.dst/],
  ["route gw garbage", { routes: [{ dst: "0.0.0.0/0", gw: "1.2.3" }] }, /routes\[0\]\.gw/],
  ["route gw of the other family", {
    routes: [{ dst: "::/0", gw: "10.0.0.1" }],
  }, /routes\[0\]\.gw/],
  ["route priority negative", {
    routes: [{ dst: "0.0.0.0/0", priority: -1 }],
  }, /routes\[0\]\.priority/],
  ["dns not an object", { dns: "8.8.8.8" }, /dns/],
  ["dns nameservers not a list", { dns: { nameservers: "10.0.0.10" } }, /dns\.nameservers/],
  ["dns nameserver not an address", {
    dns: { nameservers: ["resolver"] },
  }, /dns\.nameservers\[0\]/],
  ["dns search not strings", { dns: { search: [1] } }, /dns\.search\[0\]/],
  ["dns domain not a string", { dns: { domain: 7 } }, /dns\.domain/],
];

Deno.test("a prevResult that is not a valid CNI result is code 7 for ADD and CHECK, with no call", async () => {
  for (const cmd of ["ADD", "CHECK"]) {
    for (const [what, prev, where] of GARBAGE_PREV) {
      const r = await plugin(env(cmd), conf("1.0.0", { prevResult: prev }));
      assert.equal(r.out?.code, 7, `${cmd} ${what}: ${r.stdout}`);
      assert.match(String(r.out?.msg), /^Invalid prevResult/, what);
      assert.match(String(r.out?.msg), where, what);
      assert.equal(r.calls.length, 0, what);
    }
  }
});

Deno.test("a valid prevResult is forwarded whole, and DEL ignores a broken one", async () => {
  const prev = {
    cniVersion: "1.0.0",
    interfaces: [{ name: "veth0", mac: "0a:58:0a:f4:00:01" }, {
      name: "eth0",
      mtu: 1400,
      sandbox: "/run/netns/p",
    }],
    ips: [{ address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 1 }, {
      address: "fd00:1::5/64",
      interface: 1,
    }],
    routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }, { dst: "fd00::/8" }],
    dns: { nameservers: ["10.1.0.10", "fd00::53"], domain: "cluster.local", search: ["a.b"] },
  };
  const r = await plugin(env("ADD"), conf("1.0.0", { prevResult: prev }));
  assert.equal(r.code, 0, r.stdout);
  const { cniVersion: _, ...rest } = prev;
  assert.deepEqual(r.calls[0]?.body.config.prevResult, { cniVersion: "1.1.0", ...rest });
  const del = await plugin(env("DEL"), conf("1.0.0", { prevResult: { ips: [{ address: 5 }] } }));
  assert.equal(del.code, 0, del.stdout);
  assert.equal(del.calls[0]?.body.config.prevResult, undefined);
});

Deno.test("the plugin logs in the daemons' format: text, or json from the config or WGCNI_LOG_FORMAT", async () => {
  const failing = () => ({ status: 500, body: { code: 100, msg: "no luck" } });
  const run = async (extraEnv: Record<string, string>, extraConf: Record<string, unknown>) => {
    let err = "";
    const io: PluginIo = {
      env: (n) => ({ ...env("ADD"), ...extraEnv } as Record<string, string>)[n],
      stdin: chunkedReader(new TextEncoder().encode(conf("1.0.0", extraConf)), 1000),
      stdout: () => {},
      stderr: (t) => err += t,
      call: () => Promise.resolve(failing()),
      netnsExists: () => true,
    };
    assert.equal(await pluginMain(io), 1);
    return err;
  };
  assert.match(
    await run({}, {}),
    /^\d{4}-\d\d-\d\dT[\d:.]+Z WARNING wgcni\.plugin: ADD failed: code 100: no luck\n$/,
  );
  assert.match(await run({ JOURNAL_STREAM: "8:1" }, {}), /^WARNING wgcni\.plugin: ADD failed/);
  for (
    const line of [
      await run({ WGCNI_LOG_FORMAT: "json" }, {}),
      await run({}, { logFormat: "json" }),
    ]
  ) {
    const rec = JSON.parse(line);
    assert.equal(rec.level, "warning");
    assert.equal(rec.logger, "wgcni.plugin");
    assert.equal(rec.msg, "ADD failed: code 100: no luck");
  }
  let out = "";
  const bad: PluginIo = {
    env: (n) => env("ADD")[n as keyof ReturnType<typeof env>],
    stdin: chunkedReader(new TextEncoder().encode(conf("1.0.0", { logFormat: "xml" })), 1000),
    stdout: (t) => out += t,
    stderr: () => {},
    call: () => Promise.resolve(failing()),
    netnsExists: () => true,
  };
  assert.equal(await pluginMain(bad), 1);
  assert.equal(JSON.parse(out).code, 7);
});
