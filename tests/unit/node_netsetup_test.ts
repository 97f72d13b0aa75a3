import assert from "node:assert/strict";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { getLogger } from "../../lib/log.ts";
import { backendOfLink, raiseSysctl } from "../../modes/node/netsetup.ts";
import { masqueradeRuleset } from "../../lib/ip/nft.ts";

Deno.test("raiseSysctl() raises a limit that is too low and never lowers one", async () => {
  const low = new RecordingRunner((argv) => argv[1] === "-n" ? { stdout: "128\n" } : undefined);
  await raiseSysctl(low, getLogger("test"), "fs.inotify.max_user_instances", 8192);
  assert.deepEqual(low.lines, [
    "sysctl -n fs.inotify.max_user_instances",
    "sysctl -q -w fs.inotify.max_user_instances=8192",
  ]);
  const high = new RecordingRunner(() => ({ stdout: "65536\n" }));
  await raiseSysctl(high, getLogger("test"), "fs.inotify.max_user_instances", 8192);
  assert.deepEqual(high.lines, ["sysctl -n fs.inotify.max_user_instances"]);
});

Deno.test("masqueradeRuleset() replaces only wgcni's table, per family switched on", () => {
  const rules = masqueradeRuleset({
    iface: "wgcni0",
    v4Pools: ["10.244.0.0/16", "10.250.0.0/24"],
    v6Pools: ["fd00:10:244::/56"],
    families: [4],
  });
  assert.match(rules, /^table inet wgcni \{\}\ndelete table inet wgcni\ntable inet wgcni \{/);
  assert.match(
    rules,
    /oifname != "wgcni0" ip saddr \{ 10.244.0.0\/16, 10.250.0.0\/24 \} ip daddr != \{ 10.244.0.0\/16, 10.250.0.0\/24 \} masquerade/,
  );
  assert.doesNotMatch(rules, /ip6/);
  assert.equal(
    rules.match(/table/g)?.length,
    rules.match(/table inet wgcni\b/g)?.length,
    "only wgcni's table",
  );
});

Deno.test("an adopted interface's backend is told by its link kind, not its name", () => {
  const link = (name: string, kind: string) =>
    JSON.stringify([{ ifname: name, linkinfo: { info_kind: kind } }]);
  assert.equal(backendOfLink(link("wgcni0", "wireguard")), "kernel");
  assert.equal(backendOfLink(link("wireguard0", "tun")), "userspace");
  assert.equal(backendOfLink(link("wg0", "wireguard")), "kernel");
});
