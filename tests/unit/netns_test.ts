import assert from "node:assert/strict";
import { NetnsInspector } from "../../lib/ip/netns.ts";
import { RecordingRunner } from "../../lib/ip/runner.ts";

Deno.test("inspect() refuses real paths that are not another network namespace, starting no process", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/file`;
    await Deno.writeTextFile(file, "");
    const cases: [string, RegExp][] = [
      ["/proc/self/ns/net", /^is the node's own network namespace$/],
      [`/proc/${Deno.pid}/ns/net`, /^is the node's own network namespace$/],
      ["/proc/self/ns/mnt", /^is a mnt namespace, not a network namespace$/],
      ["/proc/self/ns/uts", /^is a uts namespace, not a network namespace$/],
      [file, /^is a regular file, not a network namespace$/],
      [dir, /^is a directory, not a network namespace$/],
      ["/dev/null", /^is a character device, not a network namespace$/],
      [`${dir}/missing`, /^does not exist$/],
    ];
    const runner = new RecordingRunner();
    const inspector = new NetnsInspector(runner);
    for (const [path, why] of cases) {
      const v = await inspector.inspect(path);
      assert.equal(v.ok, false, path);
      if (!v.ok) {
        assert.match(v.why, why, path);
        assert.equal(v.missing, path.endsWith("missing"));
      }
    }
    assert.deepEqual(runner.lines, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "inspect() accepts another process's network namespace by its /proc link",
  ignore: Deno.uid() !== 0,
  async fn() {
    const child = new Deno.Command("unshare", { args: ["--net", "sleep", "30"] }).spawn();
    try {
      const path = `/proc/${child.pid}/ns/net`;
      for (let i = 0; i < 50; i++) {
        if ((await Deno.readLink(path)) !== (await Deno.readLink("/proc/self/ns/net"))) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const runner = new RecordingRunner();
      const v = await new NetnsInspector(runner).inspect(path);
      assert.equal(v.ok, true, JSON.stringify(v));
      assert.deepEqual(runner.lines, []);
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
  },
});

/** nsfs files as stat shows them: device 4, the namespace's inode. */
function nsfs(ino: number): Deno.FileInfo {
  return { dev: 4, ino, isFile: true, isDirectory: false, isSymlink: false } as Deno.FileInfo;
}

Deno.test("inspect() tells a bind-mounted namespace's kind from mountinfo, and asks setns() only when nothing tells", async () => {
  const mountinfo = [
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
    "46 45 0:4 net:[4026532178] /run/netns/pod rw shared:2 - nsfs nsfs rw",
    "47 45 0:4 mnt:[4026532300] /run/mntns/x rw shared:2 - nsfs nsfs rw",
  ].join("\n") + "\n";
  const inodes: Record<string, number> = {
    "/proc/self/ns/net": 4026531833,
    "/run/netns/pod": 4026532178,
    "/run/mntns/x": 4026532300,
    "/elsewhere/ns": 4026532999,
  };
  const files = {
    stat: (p: string) =>
      p in inodes ? Promise.resolve(nsfs(inodes[p] as number)) : Promise.reject(new Error(p)),
    readLink: (p: string) => Promise.reject(new Error(`${p}: not a link`)),
    readText: () => Promise.resolve(mountinfo),
  };
  const runner = new RecordingRunner((argv) => ({
    code: argv.includes("--net=/elsewhere/ns") ? 0 : 1,
  }));
  const inspector = new NetnsInspector(runner, { files });
  assert.deepEqual(await inspector.inspect("/run/netns/pod"), { ok: true, inode: 4026532178 });
  const mnt = await inspector.inspect("/run/mntns/x");
  assert.equal(mnt.ok, false);
  assert.deepEqual(runner.lines, []);
  assert.deepEqual(await inspector.inspect("/elsewhere/ns"), { ok: true, inode: 4026532999 });
  assert.deepEqual(runner.lines, ["nsenter --net=/elsewhere/ns -- true"]);
});
