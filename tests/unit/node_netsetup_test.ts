import assert from "node:assert/strict";
import { RecordingRunner } from "../../lib/ip/mod.ts";
import { getLogger } from "../../lib/log.ts";
import { backendOfLink, raiseSysctl } from "../../modes/node/netsetup.ts";
import { type FamilyRules, nodeRuleset, parsePortRule } from "../../lib/ip/nft.ts";
import { familyRules } from "../../modes/node/netsetup.ts";
import { NODE_NET } from "./_node_net.ts";
import { parseIngressFilter } from "../../cli/node.ts";

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

const NODE = NODE_NET;

Deno.test("familyRules() takes the pools, gateways and host mask of one family", () => {
  const cases = [
    [4, ["10.244.0.0/16", "10.250.0.0/24"], "10.244.3", ".1", "0.0.0.255", true, false],
    [
      6,
      ["fd00:10:244::/56", "fd00:10:250::/112"],
      "fd00:10:244:3:",
      ":1",
      "::ffff:ffff:ffff:ffff",
      false,
      true,
    ],
  ] as const;
  for (const [family, pools, net, host, hostMask, masquerade, ingressFilter] of cases) {
    const expected: FamilyRules = {
      pools: [...pools],
      podPools: [pools[0]],
      gateways: [`${net}${host}`],
      subnets: [`${net}${family === 4 ? ".0/24" : ":/64"}`],
      hostMask,
      masquerade,
      ingressFilter,
    };
    assert.deepEqual(familyRules(NODE, family), expected, `IPv${family}`);
  }
});

Deno.test("nodeRuleset() replaces only wgcni's table: masquerade, pods kept from the node, ingress filter, no redirects", () => {
  const rules = nodeRuleset({
    iface: "wgcni0",
    v4: familyRules(NODE, 4),
    v6: familyRules(NODE, 6),
    podOpenPorts: NODE.podOpenPorts,
  });
  assert.match(rules, /^table inet wgcni \{\}\ndelete table inet wgcni\ntable inet wgcni \{/);
  assert.equal(
    rules.match(/table/g)?.length,
    rules.match(/table inet wgcni\b/g)?.length,
    "only wgcni's table",
  );
  for (
    const line of [
      'oifname != "wgcni0" ip saddr { 10.244.0.0/16, 10.250.0.0/24 } ip daddr != { 10.244.0.0/16, 10.250.0.0/24 } masquerade',
      "type filter hook input priority filter; policy accept;",
      "ip saddr { 10.244.0.0/16 } jump from_pods",
      "ip6 saddr { fd00:10:244::/56 } jump from_pods",
      "ct state established,related accept",
      'iifname "lo" accept',
      'iifname "wgcni0" ip saddr & 0.0.0.255 == 0.0.0.1 accept',
      'iifname "wgcni0" ip6 saddr & ::ffff:ffff:ffff:ffff == ::1 accept',
      "ip daddr { 10.244.3.1 } icmp type echo-request accept",
      "ip6 daddr { fd00:10:244:3::1 } icmpv6 type echo-request accept",
      "tcp dport { 53, 8000-8100 } accept",
      "udp dport { 53 } accept",
      "type filter hook forward priority filter; policy accept;",
      "type filter hook output priority filter; policy accept;",
      'oifname "wgcni0" icmp type redirect counter drop',
      'oifname "wgcni0" icmpv6 type nd-redirect counter drop',
      "ip6 daddr { fd00:10:244::/56 } ip6 saddr != { fd00:10:244::/56, fd00:10:250::/112 } ct state != { established, related } counter drop",
    ]
  ) {
    assert.ok(rules.includes(`    ${line}\n`), `has: ${line}`);
  }
  assert.doesNotMatch(rules, /ip6 saddr .* masquerade/, "no IPv6 masquerade");
  assert.doesNotMatch(
    rules,
    /ip daddr \{ 10\.244\.0\.0\/16 \}.*ct state/,
    "no IPv4 ingress filter",
  );
  // The drop ends the pods' chain: nothing is let through after it.
  const fromPods = rules.slice(rules.indexOf("chain from_pods"));
  assert.ok(fromPods.includes("counter drop\n  }"), "the drop ends the chain");
  const plain = nodeRuleset({
    iface: "wgcni0",
    v4: familyRules({ ...NODE, ingressFilter: [] }, 4),
    v6: familyRules({ ...NODE, ingressFilter: [] }, 6),
    podOpenPorts: [],
  });
  assert.doesNotMatch(plain, /hook forward/, "no forward chain without an ingress filter");
  assert.doesNotMatch(plain, /dport/);
});

Deno.test("pod open ports and ingress filter families parse as the flags take them", () => {
  assert.deepEqual(parsePortRule("TCP/53"), { proto: "tcp", from: 53, to: 53 });
  assert.deepEqual(parsePortRule("udp/30000-32767"), { proto: "udp", from: 30000, to: 32767 });
  for (
    const bad of ["tcp", "53", "icmp/1", "tcp/0", "tcp/65536", "tcp/9-1", "tcp/a", "tcp/1-2-3"]
  ) {
    assert.throws(() => parsePortRule(bad), /Cannot use pod open port/, bad);
  }
  assert.deepEqual(parseIngressFilter(["v6"]), [6]);
  assert.deepEqual(parseIngressFilter(["6", "v4", "v6"]), [4, 6]);
  assert.throws(() => parseIngressFilter(["ipv6"]), /--ingress-filter "ipv6"/);
});

Deno.test("an adopted interface's backend is told by its link kind, not its name", () => {
  const link = (name: string, kind: string) =>
    JSON.stringify([{ ifname: name, linkinfo: { info_kind: kind } }]);
  assert.equal(backendOfLink(link("wgcni0", "wireguard")), "kernel");
  assert.equal(backendOfLink(link("wireguard0", "tun")), "userspace");
  assert.equal(backendOfLink(link("wg0", "wireguard")), "kernel");
});
