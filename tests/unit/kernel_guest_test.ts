import assert from "node:assert/strict";
import {
  GUEST_MODULES,
  initScript,
  KERNEL_GROUP,
  moduleLoadOrder,
  newcArchive,
  shellQuote,
  stage2Script,
} from "../kernel/guest.ts";

/** Reads a newc archive back: name, mode, rdev and data of each entry, up to the trailer. */
function readNewc(bytes: Uint8Array) {
  const text = new TextDecoder();
  const entries: { name: string; mode: number; rdev: [number, number]; data: string }[] = [];
  let at = 0;
  const align = () => at = (at + 3) & ~3;
  for (;;) {
    const header = text.decode(bytes.subarray(at, at + 110));
    assert.equal(header.slice(0, 6), "070701", `magic at ${at}`);
    const field = (i: number) => parseInt(header.slice(6 + 8 * i, 14 + 8 * i), 16);
    const [mode, size, rdevMajor, rdevMinor, nameSize] = [1, 6, 9, 10, 11].map(field) as number[];
    at += 110;
    const name = text.decode(bytes.subarray(at, at + nameSize! - 1));
    assert.equal(bytes[at + nameSize! - 1], 0, "name ends with NUL");
    at += nameSize!;
    align();
    if (name === "TRAILER!!!") break;
    entries.push({
      name,
      mode: mode!,
      rdev: [rdevMajor!, rdevMinor!],
      data: text.decode(bytes.subarray(at, at + size!)),
    });
    at += size!;
    align();
  }
  assert.equal(at, bytes.length, "nothing after the trailer");
  return entries;
}

Deno.test("newcArchive() writes entries the kernel can unpack, each padded to four bytes", () => {
  const archive = newcArchive([
    { path: "bin", type: "dir" },
    { path: "/bin/busybox", type: "file", data: new TextEncoder().encode("abcde"), mode: 0o755 },
    { path: "bin/sh", type: "symlink", target: "busybox" },
    { path: "dev/console", type: "char", major: 5, minor: 1 },
  ]);
  assert.equal(archive.length % 4, 0);
  assert.deepEqual(readNewc(archive), [
    { name: "bin", mode: 0o040755, rdev: [0, 0], data: "" },
    { name: "bin/busybox", mode: 0o100755, rdev: [0, 0], data: "abcde" },
    { name: "bin/sh", mode: 0o120777, rdev: [0, 0], data: "busybox" },
    { name: "dev/console", mode: 0o020600, rdev: [5, 1], data: "" },
  ]);
});

Deno.test("moduleLoadOrder() puts dependencies first, once, whatever the dashes", () => {
  const dep = [
    "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko",
    "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/net/9p/9pnet.ko:",
    "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko",
    "kernel/fs/netfs/netfs.ko:",
    "kernel/drivers/virtio/virtio_ring.ko:",
    "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko",
  ].join("\n");
  assert.deepEqual(moduleLoadOrder(dep, ["9pnet_virtio", "9p", "virtio_rng"]), [
    "kernel/net/9p/9pnet.ko",
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/net/9p/9pnet_virtio.ko",
    "kernel/fs/netfs/netfs.ko",
    "kernel/fs/fscache/fscache.ko",
    "kernel/fs/9p/9p.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
  ]);
  assert.throws(() => moduleLoadOrder(dep, ["overlay"]), /Cannot find module overlay/);
});

Deno.test("shellQuote() leaves plain words alone and quotes everything else for sh", async () => {
  const words = ["deno", "--filter", "it's a test", "$HOME", "a;b", "", "x=1"];
  assert.equal(shellQuote("tests/run.ts"), "tests/run.ts");
  const r = await new Deno.Command("sh", {
    args: ["-c", `printf '%s\\n' ${words.map(shellQuote).join(" ")}`],
    stdout: "piped",
  }).output();
  assert.equal(new TextDecoder().decode(r.stdout), words.join("\n") + "\n");
});

Deno.test("the guest's second stage checks kernel WireGuard before the command and always ends", () => {
  const script = stage2Script({
    argv: ["deno", "task", "it's"],
    cwd: "/work/wgcni",
    env: { WGCNI_TEST_TIME_SCALE: "10" },
    limitS: 600,
  });
  const probe = script.indexOf("ip link add wgcniprobe type wireguard || fail");
  const command = script.indexOf(`deno task 'it'"'"'s' >>$G/stdout 2>>$G/stderr`);
  assert.ok(probe > 0 && command > probe, "the probe runs first and failing it stops the run");
  for (const m of GUEST_MODULES) assert.match(script, new RegExp(`\\b${m}\\b`));
  assert.match(script, /export WGCNI_TEST_TIME_SCALE=10/);
  assert.match(script, /\( sleep 600;.*end \) &/);
  assert.match(script, /echo \$\? > \$G\/status\nend\n$/);
});

Deno.test("the guest's own /tmp still shows a checkout that lives under this machine's /tmp", () => {
  const init = initScript({
    release: "6.1.0-57-amd64",
    modules: "/var/cache/k/root/lib/modules/6.1.0-57-amd64",
  }, [
    "/tmp/ci clone",
    "/usr/local/bin",
  ]);
  const hold = init.indexOf("mount -o bind /newroot'/tmp/ci clone' /keep0");
  const tmpfs = init.indexOf("mount -t tmpfs -o mode=1777 tmp /newroot/tmp");
  const put = init.indexOf("mount --move /keep0 /newroot'/tmp/ci clone'");
  assert.ok(hold > 0 && tmpfs > hold && put > tmpfs, init);
  assert.doesNotMatch(init, /usr\/local\/bin/, "only paths under /tmp and /run need it");
  assert.match(init, /switch_root \/newroot \/bin\/sh \/run\/wgcni-guest\/stage2\.sh\n$/);
});

Deno.test("the kernel group names end-to-end files that exist, each once", () => {
  const root = new URL("../..", import.meta.url).pathname;
  assert.equal(new Set(KERNEL_GROUP).size, KERNEL_GROUP.length);
  for (const f of KERNEL_GROUP) {
    assert.match(f, /^tests\/e2e\/\w+_test\.ts$/);
    assert.ok(Deno.statSync(`${root}${f}`).isFile, f);
  }
});
