/** The plugin as a process: the real executable against a fake node manager on a real socket. */
import assert from "node:assert/strict";
import { LOCAL_PATHS } from "../../lib/api/local_types.ts";

const MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

async function run(env: Record<string, string>, stdin: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN],
    env: { NO_COLOR: "1", ...env },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  try {
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  } catch {
    // The plugin stops reading an oversized config; its answer is on stdout.
  }
  const out = await child.output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

Deno.test("the plugin process sends a CniRequest over the socket and prints the result", async () => {
  const dir = await Deno.makeTempDir();
  const socket = `${dir}/node.sock`;
  const seen: { path: string; body: unknown }[] = [];
  const server = Deno.serve({ path: socket, onListen() {} }, async (req) => {
    seen.push({ path: new URL(req.url).pathname, body: await req.json() });
    return Response.json({
      result: {
        cniVersion: "1.1.0",
        ips: [{ address: "10.244.0.9/32", interface: 0 }],
        interfaces: [{ name: "eth0" }],
      },
    });
  });
  try {
    const r = await run({
      CNI_COMMAND: "ADD",
      CNI_CONTAINERID: "abc",
      CNI_NETNS: "/run/netns/x",
      CNI_IFNAME: "eth0",
      CNI_ARGS: "IgnoreUnknown=1;K8S_POD_NAME=web",
    }, JSON.stringify({ cniVersion: "0.3.1", name: "wgcni", type: "wgcni", socket }));
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual(JSON.parse(r.stdout).ips, [{
      version: "4",
      address: "10.244.0.9/32",
      interface: 0,
    }]);
    assert.equal(seen[0]?.path, LOCAL_PATHS.add);
    assert.deepEqual(seen[0]?.body, {
      containerId: "abc",
      ifname: "eth0",
      netns: "/run/netns/x",
      args: { K8S_POD_NAME: "web" },
      config: { cniVersion: "0.3.1", name: "wgcni", type: "wgcni", socket },
    });
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the plugin process reports code 11 and 50 when no node manager listens", async () => {
  const socket = "/nonexistent/wgcni.sock";
  const add = await run(
    { CNI_COMMAND: "ADD", CNI_CONTAINERID: "a", CNI_NETNS: "/run/netns/x", CNI_IFNAME: "eth0" },
    JSON.stringify({ cniVersion: "1.0.0", name: "wgcni", socket }),
  );
  assert.equal(add.code, 1);
  assert.equal(JSON.parse(add.stdout).code, 11);
  const status = await run(
    { CNI_COMMAND: "STATUS" },
    JSON.stringify({ cniVersion: "1.1.0", name: "wgcni", socket }),
  );
  assert.equal(JSON.parse(status.stdout).code, 50);
  const del = await run(
    { CNI_COMMAND: "DEL", CNI_CONTAINERID: "a", CNI_NETNS: "", CNI_IFNAME: "eth0" },
    JSON.stringify({ cniVersion: "1.0.0", name: "wgcni", socket }),
  );
  assert.equal(del.code, 0);
  assert.equal(del.stdout, "");
});

Deno.test("the plugin process rejects bad JSON and oversized stdin on stdout", async () => {
  const env = { CNI_COMMAND: "ADD", CNI_CONTAINERID: "a", CNI_NETNS: "/x", CNI_IFNAME: "eth0" };
  const bad = await run(env, "{oops");
  assert.equal(bad.code, 1);
  assert.equal(JSON.parse(bad.stdout).code, 6);
  const big = await run(env, " ".repeat(5 * 1024 * 1024));
  assert.equal(JSON.parse(big.stdout).code, 5);
});
