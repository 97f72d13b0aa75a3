import assert from "node:assert/strict";
import { envName } from "../../cli/_config.ts";
import { buildCli } from "../../cli/commands.ts";
import { commandTable } from "../../cli/completion.ts";
import { runWgcni as wgcni } from "./_cluster_process.ts";
import { tempDir } from "./_temp_dir.ts";

const KEY = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

Deno.test("envName() maps flags to WGCNI_ variables", () => {
  assert.equal(envName("--pod-cidr"), "WGCNI_POD_CIDR");
  assert.equal(envName("node-mask-v4"), "WGCNI_NODE_MASK_V4");
});

Deno.test("wgcni version prints the version and CNI versions", async () => {
  const r = await wgcni(["version", "--json"]);
  assert.equal(r.code, 0);
  const v = JSON.parse(r.stdout);
  assert.match(v.version, /^\d+\.\d+\.\d+$/);
  assert.ok(v.cniVersions.includes("1.1.0"));
});

Deno.test("every command of the tree answers --help with its own help and exit 0", async () => {
  const paths = [...commandTable(buildCli()).keys()];
  assert.ok(paths.length >= 24, `${paths.length} commands`);
  // One process walks the tree: a process per command would take a minute.
  const script = `
    import { runCli } from "${new URL("../../cli/commands.ts", import.meta.url).href}";
    const out = [];
    for (const path of ${JSON.stringify(paths)}) {
      const words = path === "" ? [] : path.split(" ");
      out.push({ path, code: await runCli([...words, "--help"]) });
    }
    console.error(JSON.stringify(out));
  `;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(r.stdout);
  const codes = JSON.parse(new TextDecoder().decode(r.stderr).trim().split("\n").pop()!) as {
    path: string;
    code: number;
  }[];
  for (const { path, code } of codes) assert.equal(code, 0, `${path} --help`);
  for (const path of paths.filter((p) => p !== "")) {
    assert.ok(text.includes(`Usage: wgcni ${path}`), `${path} prints its own usage`);
  }
});

Deno.test("each WGCNI_ variable means one thing everywhere", () => {
  const seen = new Map<string, Set<string>>();
  const walk = (cmd: ReturnType<typeof buildCli>) => {
    for (const o of cmd.options as unknown as { envVar?: string; long?: string }[]) {
      if (o.envVar === undefined) continue;
      const flags = seen.get(o.envVar) ?? new Set();
      flags.add(o.long ?? "");
      seen.set(o.envVar, flags);
    }
    for (const c of cmd.commands) walk(c as ReturnType<typeof buildCli>);
  };
  walk(buildCli());
  // A variable shared by two flags names one secret: the server's flag and its clients' --token.
  const shared = Object.fromEntries(
    [...seen].filter(([, flags]) => flags.size > 1).map(([v, f]) => [v, [...f].sort()]),
  );
  assert.deepEqual(shared, {
    WGCNI_JOIN_TOKEN: ["--join-token", "--token"],
    WGCNI_JOIN_TOKEN_FILE: ["--join-token-file", "--token-file"],
    WGCNI_ADMIN_TOKEN: ["--admin-token", "--token"],
    WGCNI_ADMIN_TOKEN_FILE: ["--admin-token-file", "--token-file"],
  });
  for (const generic of ["WGCNI_TOKEN", "WGCNI_NAME", "WGCNI_FROM", "WGCNI_TO"]) {
    assert.ok(!seen.has(generic), generic);
  }
});

Deno.test("unknown commands and bad flags give one line on stderr and exit 2", async () => {
  for (
    const args of [
      ["bogus"],
      ["node", "join", "http://x", "--bogus"],
      ["cluster", "serve", "--node-mask-v4", "99"],
      ["cluster", "serve", "--node-mask-v4", "x"],
      ["demo", "--nodes", "-1"],
      ["node", "join", "http://x", "--pod-open-port", "icmp/1"],
      ["node", "join", "http://x", "--pod-open-port", "tcp/53", "--pod-open-port", "tcp/0"],
      ["node", "join", "http://x", "--ingress-filter", "v7"],
      ["node", "attach", "VM", "--public-key", KEY],
      ["node", "attach", "vm", "--public-key", "abc"],
      ["node", "attach", "vm", "--public-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="],
      ["node", "attach", "vm"],
      ["node", "attach", "vm", "--public-key", KEY, "--endpoint-port", "0"],
      ["node", "attach", "vm", "--public-key", KEY, "--format", "ini"],
      ["node", "detach", "bad_name"],
    ]
  ) {
    const r = await wgcni(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /^error: /);
  }
});

Deno.test("with CNI_COMMAND set the executable is the plugin", async () => {
  const r = await wgcni([], { CNI_COMMAND: "VERSION" });
  assert.equal(r.code, 0);
  assert.ok(JSON.parse(r.stdout).supportedVersions.includes("0.3.1"));
});

Deno.test("the new node join flags have their WGCNI_ twins, checked the same way", async () => {
  for (
    const env of [
      { WGCNI_POD_OPEN_PORT: "tcp/53,udp/0" },
      { WGCNI_INGRESS_FILTER: "v6,ipv4" },
    ]
  ) {
    const r = await wgcni(["node", "join", "http://x"], env);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^error: option .* from env 'WGCNI_(POD_OPEN_PORT|INGRESS_FILTER)'/);
  }
});

Deno.test("YAML values go through the same checks as flags", async () => {
  using tmp = tempDir("wgcni-cli-");
  const dir = tmp.path;
  const cases: [string, RegExp][] = [
    ["node-mask-v4: twenty", /node-mask-v4: expected a whole number, got "twenty"/],
    ["node-mask-v4: 99", /node-mask-v4: expected 1 to 32, got 99/],
    ["node-lease: 7days", /node-lease: /],
    ["insecure: yes", /insecure: expected true or false, got "yes"/],
    ["listen: [a, b]", /listen: expected one value, not a list/],
    ["client-cidr: {a: 1}", /client-cidr: expected a value/],
  ];
  for (const [yaml, message] of cases) {
    const file = `${dir}/c.yaml`;
    Deno.writeTextFileSync(file, `pod-cidr: 10.246.0.0/16\n${yaml}\n`);
    const r = await wgcni(["cluster", "serve", "--config", file, "--data-dir", `${dir}/d`]);
    assert.equal(r.code, 1, `${yaml}: ${r.stderr}`);
    assert.ok(!r.stderr.includes("Map keys"), r.stderr);
    assert.match(r.stderr, /^wgcni: Cannot use config file \S+c\.yaml: /);
    assert.match(r.stderr, message);
  }
  // A single pool as a plain string is a list of one, as on the command line.
  const file = `${dir}/ok.yaml`;
  Deno.writeTextFileSync(file, "pod-cidr: 10.246.0.0/16\nlisten: nowhere\n");
  const r = await wgcni(["cluster", "serve", "--config", file, "--data-dir", `${dir}/d`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /Cannot listen on "nowhere": expected ADDR:PORT/);
});

Deno.test("boolean variables are true or false, not merely set", async () => {
  using tmp = tempDir("wgcni-cli-");
  const dir = tmp.path;
  Deno.writeTextFileSync(`${dir}/token`, "some-token-value-0000001\n");
  const add = ["client", "add", "laptop", "--cluster", "http://192.0.2.254:7443"];
  const off = await wgcni([...add, "--token-file", `${dir}/token`], { WGCNI_INSECURE: "false" });
  assert.equal(off.code, 1);
  assert.match(off.stderr, /over plain HTTP/);
  const bad = await wgcni([...add, "--token-file", `${dir}/token`], { WGCNI_INSECURE: "maybe" });
  assert.equal(bad.code, 1);
  assert.match(
    bad.stderr,
    /^wgcni: Cannot use WGCNI_INSECURE: expected true or false, got "maybe"/,
  );
});

Deno.test("wgcni status without a node manager says so, and --json stays JSON", async () => {
  const text = await wgcni(["status", "--socket", "/nonexistent/wgcni.sock"]);
  assert.equal(text.code, 1);
  assert.match(
    text.stderr,
    /^wgcni: Cannot reach the node manager: no socket at \/nonexistent\/wgcni\.sock \(is `wgcni node join` running/,
  );
  const json = await wgcni(["status", "--json", "--socket", "/nonexistent/wgcni.sock"]);
  assert.equal(json.code, 1);
  assert.match(JSON.parse(json.stdout).error, /no socket at \/nonexistent\/wgcni\.sock/);
});

Deno.test("a word that names no command of a group is an error, --help or not", async () => {
  for (const args of [["cluster", "token", "rotate", "--help"], ["cluster", "token", "rotate"]]) {
    const r = await wgcni(args);
    assert.equal(r.code, 2, args.join(" "));
    assert.equal(r.stdout, "");
    assert.match(
      r.stderr,
      /^error: unknown command 'rotate' of wgcni cluster token \(expected create, list, revoke\)/,
    );
  }
});

Deno.test("wgcni completion bash completes commands and flags at every level", async () => {
  const script = await wgcni(["completion", "bash"]);
  assert.equal(script.code, 0, script.stderr);
  const complete = async (line: string) => {
    const words = line.split(" ");
    const out = await new Deno.Command("bash", {
      args: [
        "-c",
        `${script.stdout}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${
          words.length - 1
        }; _wgcni; printf '%s\\n' "\${COMPREPLY[@]}"`,
      ],
      stdout: "piped",
    }).output();
    return new TextDecoder().decode(out.stdout).trim().split("\n");
  };
  assert.deepEqual(await complete("wgcni cl"), ["cluster", "client"]);
  assert.deepEqual(await complete("wgcni cluster token "), ["create", "list", "revoke", "--help"]);
  assert.ok((await complete("wgcni node join --met")).includes("--metrics-listen"));
  assert.deepEqual(
    (await complete("wgcni node ")).filter((w) => !w.startsWith("-")),
    ["join", "leave", "attach", "detach", "rotate-key"],
  );
  assert.ok((await complete("wgcni node attach vm --endpoint")).includes("--endpoint-port"));
  assert.ok((await complete("wgcni node join https://m:7443 --tok")).includes("--token-file"));
  for (const shell of ["zsh", "fish"]) {
    const r = await wgcni(["completion", shell]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, shell === "zsh" ? /bashcompinit/ : /^complete -c wgcni /m);
  }
  assert.equal((await wgcni(["completion", "tcsh"])).code, 2);
});

Deno.test("the example configs parse, and the systemd units verify", async () => {
  using tmp = tempDir("wgcni-cli-");
  const dir = tmp.path;
  const examples = new URL("../../dist/examples/", import.meta.url).pathname;
  // Parsed in full, then stopped at the first thing that needs the machine.
  const runs: [string[], RegExp][] = [
    [
      ["cluster", "serve", "--config", `${examples}cluster.yaml`, "--data-dir", `${dir}/d`],
      /Cannot read --tls-cert \/etc\/wgcni\/tls\/cert\.pem/,
    ],
    [
      ["node", "join", "--config", `${examples}node.yaml`, "--key-dir", `${dir}/k`],
      /Cannot (read --token-file \/etc\/wgcni\/join-token|run the node manager)/,
    ],
  ];
  for (const [args, stop] of runs) {
    const r = await wgcni(args);
    assert.equal(r.code, 1, args.join(" "));
    assert.match(r.stderr, stop);
  }
  const analyze = await new Deno.Command("sh", {
    args: ["-c", "command -v systemd-analyze"],
    stdout: "null",
  }).output();
  if (!analyze.success) return;
  const units = new URL("../../dist/systemd/", import.meta.url).pathname;
  for (const unit of ["wgcni-cluster.service", "wgcni-node.service"]) {
    // Verified as installed: ExecStart names the installed wgcni.
    const text = Deno.readTextFileSync(`${units}${unit}`).replaceAll(
      "/usr/local/bin/wgcni",
      Deno.execPath(),
    );
    Deno.writeTextFileSync(`${dir}/${unit}`, text);
    const v = await new Deno.Command("systemd-analyze", {
      args: ["verify", `${dir}/${unit}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(v.stderr);
    assert.ok(v.success, `${unit}: ${err}`);
    assert.doesNotMatch(err, /Unknown (key|section)|Invalid|Failed/i, `${unit}: ${err}`);
  }
});
