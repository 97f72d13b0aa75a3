/**
 * `node join --metrics-listen`: what a node manager serves for Prometheus,
 * read as a scraper would and checked with promtool.
 */
import assert from "node:assert/strict";
import { eventually, labTest, nodeInfo, wgPeers } from "../_helpers/e2e.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";

const runner = new SystemRunner();
const PROMTOOL = (await runner.exec(["sh", "-c", "command -v promtool"])).code === 0;

/** GET /metrics inside a namespace, without any tool but bash. */
async function scrape(netns: string, port: number): Promise<string> {
  const out = await runner.run([
    "bash",
    "-c",
    `exec 3<>/dev/tcp/127.0.0.1/${port}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3`,
  ], { netns });
  return out.slice(out.indexOf("\r\n\r\n") + 4);
}

labTest(
  "a node manager serves metrics of its peers, CNI operations, addresses and watch",
  async (lab) => {
    await lab.startCluster();
    const port = 9464;
    const n1 = await lab.addNode(1, { joinArgs: ["--metrics-listen", `127.0.0.1:${port}`] });
    const n2 = await lab.addNode(2);
    const i2 = await nodeInfo(n2);
    await eventually("node1 has node2", async () => (await wgPeers(n1)).includes(i2.publicKey));
    const pod = await lab.addPod(n1, 1);
    const bad = await lab.plugin(n1, "ADD", {
      containerId: "metrics-bad",
      ifname: "eth0",
      netns: "/dev/null",
    });
    assert.equal(bad.code, 1);
    const text = await scrape(n1.netns, port);
    // promtool comes with Debian's prometheus (./install.sh --test-deps installs it).
    assert.ok(PROMTOOL, "promtool is installed");
    const lint = await runner.exec(["promtool", "check", "metrics"], { stdin: text });
    assert.equal(lint.code, 0, lint.stdout + lint.stderr);
    const value = (re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
    assert.match(text, /^wgcni_build_info\{version="[^"]+",deno="[^"]+"\} 1$/m);
    assert.equal(value(/^wgcni_node_peers\{kind="node"\} (\d+)$/m), 1);
    assert.equal(value(/^wgcni_node_peers\{kind="pod"\} (\d+)$/m), 1);
    assert.match(
      text,
      new RegExp(
        `^wgcni_node_peer_last_handshake_seconds\\{peer="node/node2",key="[^"]+"\\} \\d+$`,
        "m",
      ),
    );
    assert.ok(
      value(/^wgcni_node_peer_sent_bytes_total\{peer="node\/node2",key="[^"]+"\} (\d+)$/m) >= 0,
    );
    assert.equal(value(/^wgcni_node_cni_duration_seconds_count\{command="ADD"\} (\d+)$/m), 2);
    // Direct pod paths: a gauge and three counters, none yet (no pod talked to another).
    assert.equal(value(/^wgcni_node_direct_peers (\d+)$/m), 0);
    for (const c of ["promotions", "removals", "failures"]) {
      assert.equal(value(new RegExp(`^wgcni_node_direct_${c}_total (\\d+)$`, "m")), 0, c);
    }
    assert.equal(value(/^wgcni_node_cni_failures_total\{command="ADD",code="4"\} (\d+)$/m), 1);
    for (const family of ["ipv4", "ipv6"]) {
      assert.equal(
        value(
          new RegExp(
            `^wgcni_node_addresses_used\\{subnet="[^"]+",family="${family}"\\} (\\d+)$`,
            "m",
          ),
        ),
        1,
        `one ${family} address held (${pod.addresses.join(", ")})`,
      );
    }
    assert.ok(
      value(/^wgcni_node_addresses_free\{subnet="10\.[^"]+",family="ipv4"\} (\d+)$/m) > 200,
    );
    assert.equal(value(/^wgcni_node_cluster_connected (\d+)$/m), 1);
    assert.ok(value(/^wgcni_node_peer_operations_total (\d+)$/m) >= 1);
    assert.doesNotMatch(text, /private/i);
    // wgcni status names the pod as the runtime did, and its interface on the node.
    const status = await lab.cli(["status", "--json", "--socket", n1.socket], n1.netns);
    assert.equal(status.code, 0, status.stderr);
    const [p] = JSON.parse(status.stdout).allocations.pods as {
      podName: string;
      nodeInterface: string;
    }[];
    assert.equal(p?.podName, `demo/${pod.name}`);
    assert.match(p?.nodeInterface ?? "", /^wgp[0-9a-f]{12}$/);
  },
);
