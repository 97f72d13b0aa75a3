import assert from "node:assert/strict";
import {
  CommandError,
  netnsPath,
  RecordingRunner,
  SystemRunner,
  wrapArgv,
} from "../../lib/ip/mod.ts";

Deno.test("wrapArgv() enters a named namespace through nsenter", () => {
  assert.deepEqual(wrapArgv(["ip", "link"], { netns: "pod1" }), [
    "nsenter",
    "--net=/run/netns/pod1",
    "--",
    "ip",
    "link",
  ]);
  assert.deepEqual(wrapArgv(["wg"], { netns: "/proc/42/ns/net" }).slice(0, 2), [
    "nsenter",
    "--net=/proc/42/ns/net",
  ]);
  assert.deepEqual(wrapArgv(["wg", "show"]), ["wg", "show"]);
});

Deno.test("netnsPath() refuses names that could escape /run/netns", () => {
  for (const bad of ["..", ".", "a b", "x;y", ""]) assert.throws(() => netnsPath(bad), TypeError);
});

Deno.test("wrapArgv() refuses an empty command", () => {
  assert.throws(() => wrapArgv([]), TypeError);
});

Deno.test("RecordingRunner records command lines and answers from its responder", async () => {
  const runner = new RecordingRunner((argv) =>
    argv[0] === "wg" ? { stdout: "pub\n" } : { code: 2, stderr: "RTNETLINK answers: File exists" }
  );
  assert.equal(await runner.run(["wg", "pubkey"], { stdin: "priv" }), "pub\n");
  await assert.rejects(
    () => runner.run(["ip", "link", "add", "x"], { netns: "n1" }),
    (err: unknown) =>
      err instanceof CommandError && err.code === 2 && /File exists/.test(err.message),
  );
  assert.deepEqual(runner.lines, ["wg pubkey", "nsenter --net=/run/netns/n1 -- ip link add x"]);
  assert.equal(runner.commands[0]?.options.stdin, "priv");
});

Deno.test("SystemRunner returns stdout, feeds stdin and reports failures", async () => {
  const runner = new SystemRunner();
  assert.equal(await runner.run(["cat"], { stdin: "hello" }), "hello");
  const failed = await runner.exec(["sh", "-c", "echo oops >&2; exit 3"]);
  assert.deepEqual(failed, { code: 3, stdout: "", stderr: "oops\n" });
  await assert.rejects(() => runner.run(["sh", "-c", "exit 4"]), CommandError);
  const missing = await runner.exec(["wgcni-no-such-program"]);
  assert.equal(missing.code, 127);
});
