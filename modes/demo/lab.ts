/**
 * A simulated cluster on one machine: an underlay namespace with a bridge,
 * one namespace per node attached to it, the cluster manager and one node
 * manager per node as real processes, and pods attached through the real
 * CNI plugin path. Used by `wgcni demo` and by the end-to-end tests.
 *
 * Every name carries the lab id; every address lives inside the lab's own
 * namespaces; {@linkcode Lab.teardown} removes all of it.
 */
import type { Logger } from "../../lib/log.ts";
import type { Runner } from "../../lib/ip/runner.ts";
import { type Started, startProcess } from "../../lib/ip/process.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { launcherScript, selfArgv } from "../../lib/self.ts";

/** Addresses of the simulated underlay (documentation ranges, only inside the lab's namespaces). */
export const UNDERLAY = {
  bridgeV4: "192.0.2.1",
  prefixV4: 24,
  bridgeV6: "2001:db8:77::1",
  prefixV6: 64,
  clusterPort: 7443,
} as const;

export const LAB_POOLS = {
  pod: ["10.244.0.0/16", "fd00:10:244::/56"],
  client: ["10.250.0.0/24", "fd00:10:250::/112"],
} as const;

/** What is needed to find and remove a lab later (`wgcni demo --down`). */
export interface LabState {
  readonly id: string;
  readonly dir: string;
  readonly namespaces: string[];
  readonly pids: number[];
  readonly nodes: LabNodeState[];
  readonly joinToken: string;
  readonly adminToken: string;
}

export interface LabNodeState {
  readonly index: number;
  readonly name: string;
  readonly netns: string;
  readonly endpoint: string;
  readonly iface: string;
  readonly dir: string;
  readonly socket: string;
  pid: number;
  /** The WireGuard backend its node manager reported when it started ("kernel", "userspace"). */
  backend: string;
  readonly pods: LabPod[];
  /** More `node join` flags for this node. */
  readonly joinArgs?: readonly string[];
  /** Behind a NAT router of this kind (see {@linkcode LabNodeOptions.nat}); `endpoint` is then its LAN address. */
  readonly nat?: LabNat;
  /** The router's underlay address, for a node behind NAT. */
  readonly publicAddress?: string;
  /** The router's namespace, for a node behind NAT. */
  readonly router?: string;
  /**
   * Run the node manager in its own mount namespace with a tmpfs of this
   * size (`1m`) as its state directory (tests of a full disk); mounts of the
   * machine still reach it (slave propagation), its own go nowhere.
   */
  readonly stateTmpfs?: string;
}

/**
 * The flags that put a node manager's interface, state, keys, socket and CNI
 * config where the lab keeps them: `node join` and `node leave` both take them.
 */
export function nodePlaceFlags(node: LabNodeState): string[] {
  return [
    "--interface",
    node.iface,
    "--state-dir",
    `${node.dir}/state`,
    "--key-dir",
    `${node.dir}/keys`,
    "--socket",
    node.socket,
    "--cni-conf-dir",
    `${node.dir}/net.d`,
  ];
}

/** How {@linkcode Lab.addNode} sets a node up beyond the defaults. */
export interface LabNodeOptions {
  readonly joinArgs?: readonly string[];
  readonly stateTmpfs?: string;
  /**
   * Puts the node behind a router namespace doing nftables masquerade, and
   * joins it without `--endpoint`: "cone" keeps the node's port for every
   * destination where it can (Linux's default), "random" picks a port per
   * destination (`fully-random`), the kind no hole punching gets through.
   */
  readonly nat?: LabNat;
  /** nftables rules of the router's forward chain (behind NAT), in place before the node joins. */
  readonly routerRules?: readonly string[];
  /** The MTU of the link between the router and the node (behind NAT): a narrower path. */
  readonly routerMtu?: number;
}

/** The kinds of NAT {@linkcode LabNodeOptions.nat} builds. */
export type LabNat = "cone" | "random";

export interface LabPod {
  readonly node: string;
  readonly name: string;
  readonly netns: string;
  readonly containerId: string;
  readonly ifname: string;
  readonly addresses: string[];
}

/**
 * Pings `count` times `intervalS` apart from `netns`, each reply awaited up
 * to `waitS` seconds (late replies count); returns [transmitted, received].
 */
export async function pingFlow(
  runner: Runner,
  netns: string,
  address: string,
  options: { count: number; intervalS: number; waitS?: number },
): Promise<[number, number]> {
  const r = await runner.exec([
    "ping",
    "-n",
    "-q",
    "-i",
    String(options.intervalS),
    "-c",
    String(options.count),
    "-W",
    String(options.waitS ?? 2),
    address,
  ], { netns });
  const m = r.stdout.match(/(\d+) packets transmitted, (\d+) received/);
  if (!m) throw new Error(`ping printed no summary: ${r.stdout}${r.stderr}`);
  return [Number(m[1]), Number(m[2])];
}

/** The CNI result fields the lab reads. */
interface AddResult {
  readonly ips?: readonly { readonly address: string }[];
}

const PLUGIN_CONF = "10-wgcni.conflist";

/**
 * How many times slower than usual this machine runs wgcni: `WGCNI_TEST_TIME_SCALE`
 * (set in an emulated-CPU guest, where everything takes many times longer), else 1.
 * The lab's waits and the end-to-end tests' time budgets are multiplied by it.
 */
export function timeScale(): number {
  const s = Number(Deno.env.get("WGCNI_TEST_TIME_SCALE") ?? "1");
  return Number.isFinite(s) && s >= 1 ? s : 1;
}

/** A time budget in milliseconds, scaled by {@linkcode timeScale}. */
export function scaled(ms: number): number {
  return Math.round(ms * timeScale());
}

export class Lab {
  readonly state: LabState;
  readonly #runner: Runner;
  readonly #log: Logger;
  readonly #procs = new Map<number, Started>();
  readonly #ended = new Set<number>();
  /** Set when teardown starts: no new namespace or process after that. */
  #closed = false;
  readonly #self: string[];

  private constructor(state: LabState, runner: Runner, log: Logger, self: string[]) {
    this.state = state;
    this.#runner = runner;
    this.#log = log;
    this.#self = self;
  }

  /** A new, empty lab: directory, underlay namespace and bridge. */
  static async create(
    runner: Runner,
    log: Logger,
    options: { id?: string; dir?: string; self?: string[] } = {},
  ): Promise<Lab> {
    const id = options.id ?? randomId();
    const dir = options.dir ?? await Deno.makeTempDir({ prefix: `wgcni-lab-${id}-` });
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const state: LabState = {
      id,
      dir,
      namespaces: [],
      pids: [],
      nodes: [],
      joinToken: randomToken(),
      adminToken: randomToken(),
    };
    const lab = new Lab(state, runner, log, options.self ?? selfArgv());
    await Deno.writeTextFile(`${dir}/wgcni`, launcherScript(lab.#self), { mode: 0o755 });
    // Tokens reach the processes in files: a command line is readable by every user.
    await Deno.writeTextFile(lab.#joinTokenFile, state.joinToken + "\n", { mode: 0o600 });
    await Deno.writeTextFile(lab.#adminTokenFile, state.adminToken + "\n", { mode: 0o600 });
    const ul = await lab.#netns("ul");
    await runner.run(["ip", "-batch", "-"], {
      netns: ul,
      stdin: [
        "link set lo up",
        "link add br0 type bridge",
        `addr add ${UNDERLAY.bridgeV4}/${UNDERLAY.prefixV4} dev br0`,
        `addr add ${UNDERLAY.bridgeV6}/${UNDERLAY.prefixV6} dev br0 nodad`,
        "link set br0 up",
      ].join("\n") + "\n",
    });
    return lab;
  }

  get #joinTokenFile(): string {
    return `${this.state.dir}/join-token`;
  }

  /** The file holding the admin token (mode 0600), for `--token-file` of admin commands. */
  get adminTokenFile(): string {
    return this.#adminTokenFile;
  }

  get #adminTokenFile(): string {
    return `${this.state.dir}/admin-token`;
  }

  /** The flags that point an admin command (`client add`, `cluster node list`) at this lab's manager. */
  get adminFlags(): string[] {
    return ["--cluster", this.clusterUrl, "--token-file", this.#adminTokenFile, "--insecure"];
  }

  /** The namespace of the underlay (where the cluster manager listens). */
  get underlay(): string {
    return `wgd-${this.state.id}-ul`;
  }

  /** The cluster manager's URL, reachable from every node namespace. */
  get clusterUrl(): string {
    return `http://${UNDERLAY.bridgeV4}:${UNDERLAY.clusterPort}`;
  }

  /** The plugin launcher every node's runtime executes. */
  get pluginPath(): string {
    return `${this.state.dir}/wgcni`;
  }

  /** The URL of cluster-manager replica `replica` (0 is {@linkcode clusterUrl}). */
  replicaUrl(replica: number): string {
    return `http://${UNDERLAY.bridgeV4}:${UNDERLAY.clusterPort + replica}`;
  }

  /** The etcd URL replicas use after {@linkcode startEtcd} (loopback of the underlay namespace). */
  readonly etcdUrl = "etcd://127.0.0.1:2379";

  /** Starts a one-member etcd on the underlay namespace's loopback, for several replicas. */
  async startEtcd(): Promise<void> {
    const dir = `${this.state.dir}/etcd`;
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const p = await this.#start([
      "etcd",
      "--name",
      "lab",
      "--data-dir",
      dir,
      "--listen-client-urls",
      "http://127.0.0.1:2379",
      "--advertise-client-urls",
      "http://127.0.0.1:2379",
      "--listen-peer-urls",
      "http://127.0.0.1:2380",
      "--initial-advertise-peer-urls",
      "http://127.0.0.1:2380",
      "--initial-cluster",
      "lab=http://127.0.0.1:2380",
    ], { netns: this.underlay, logFile: `${this.state.dir}/etcd.log` });
    await this.#waitFor("etcd", scaled(30_000), async () => {
      this.#checkAlive(p, "etcd", `${this.state.dir}/etcd.log`);
      const r = await this.#runner.exec(["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/2379"], {
        netns: this.underlay,
      });
      return r.code === 0;
    }, `${this.state.dir}/etcd.log`);
  }

  /**
   * Starts the cluster manager (replica 0, or another replica on the next
   * port) in the underlay namespace; `store` selects etcd for replicas.
   * Nodes started afterwards list every replica started so far.
   */
  async startCluster(
    options: { replica?: number; store?: string; args?: readonly string[] } = {},
  ): Promise<void> {
    const replica = options.replica ?? 0;
    const suffix = replica === 0 ? "" : String(replica);
    const dataDir = `${this.state.dir}/cluster${suffix}`;
    const logFile = `${this.state.dir}/cluster${suffix}.log`;
    const port = UNDERLAY.clusterPort + replica;
    await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
    const p = await this.#start([
      ...this.#self,
      "cluster",
      "serve",
      "--listen",
      `${UNDERLAY.bridgeV4}:${port}`,
      "--insecure",
      "--data-dir",
      dataDir,
      ...(options.store !== undefined ? ["--store", options.store] : []),
      "--pod-cidr",
      LAB_POOLS.pod.join(","),
      "--client-cidr",
      LAB_POOLS.client.join(","),
      "--join-token-file",
      this.#joinTokenFile,
      "--admin-token-file",
      this.#adminTokenFile,
      ...(options.args ?? []),
    ], { netns: this.underlay, logFile });
    this.#clusterPids.set(replica, p.pid);
    await this.#waitFor("the cluster manager", scaled(30_000), async () => {
      const r = await this.#runner.exec([
        "bash",
        "-c",
        `exec 3<>/dev/tcp/${UNDERLAY.bridgeV4}/${port}`,
      ], {
        netns: this.underlay,
      });
      if (r.code !== 0) this.#checkAlive(p, "cluster manager", logFile);
      return r.code === 0;
    }, logFile);
  }

  /** Replica number → pid of its cluster manager. */
  readonly #clusterPids = new Map<number, number>();

  /** What nodes join with: every replica started so far, replica 0 first. */
  get #joinUrls(): string {
    const replicas = [...this.#clusterPids.keys()].sort((a, b) => a - b);
    return (replicas.length ? replicas : [0]).map((r) => this.replicaUrl(r)).join(",");
  }

  /** Stops a cluster manager replica (SIGTERM, or SIGKILL with `kill: true`). */
  async stopCluster(options: { kill?: boolean; replica?: number } = {}): Promise<void> {
    await this.#stop(this.#clusterPids.get(options.replica ?? 0) ?? 0, options);
  }

  /** Adds node `index` (1-based): its namespace, a veth to the underlay, and `wgcni node join`. */
  async addNode(index: number, options: LabNodeOptions = {}): Promise<LabNodeState> {
    const name = `node${index}`;
    const netns = await this.#netns(`n${index}`);
    const underlayAddress = `192.0.2.${10 + index}`;
    const ulSide = `v${this.state.id}n${index}`;
    const nat = options.nat;
    // Behind NAT, the router has the underlay address and the node a LAN one.
    const endpoint = nat ? `172.31.${index}.2` : underlayAddress;
    const outside = nat ? await this.#netns(`r${index}`) : netns;
    await this.#runner.run(["ip", "-batch", "-"], {
      netns: outside,
      stdin: [
        "link set lo up",
        `link add eth0 type veth peer name ${ulSide} netns /run/netns/${this.underlay}`,
        `addr add ${underlayAddress}/${UNDERLAY.prefixV4} dev eth0`,
        ...(nat ? [] : [
          `addr add 2001:db8:77::${(10 + index).toString(16)}/${UNDERLAY.prefixV6} dev eth0 nodad`,
        ]),
        "link set eth0 up",
        `route add default via ${UNDERLAY.bridgeV4}`,
        ...(nat
          ? [
            `link add lan0 type veth peer name eth0 netns /run/netns/${netns}`,
            `addr add 172.31.${index}.1/24 dev lan0`,
            ...(options.routerMtu ? [`link set lan0 mtu ${options.routerMtu}`] : []),
            "link set lan0 up",
          ]
          : []),
      ].join("\n") + "\n",
    });
    if (nat) {
      await this.#runner.run(["ip", "-batch", "-"], {
        netns,
        stdin: [
          `addr add ${endpoint}/24 dev eth0`,
          ...(options.routerMtu ? [`link set eth0 mtu ${options.routerMtu}`] : []),
          "link set eth0 up",
          `route add default via 172.31.${index}.1`,
        ].join("\n") + "\n",
      });
      await this.#runner.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], { netns: outside });
      await this.#runner.run(["nft", "-f", "-"], {
        netns: outside,
        stdin: [
          "table ip lab_nat {",
          // What comes from outside unasked is dropped before its connection is
          // confirmed, so it holds no port a later mapping would clash with.
          "  chain in {",
          "    type filter hook input priority filter; policy accept;",
          '    iifname "eth0" ct state new drop',
          "  }",
          "  chain forward {",
          "    type filter hook forward priority filter; policy accept;",
          ...(options.routerRules ?? []).map((r) => `    ${r}`),
          "  }",
          "  chain post {",
          "    type nat hook postrouting priority srcnat; policy accept;",
          `    oifname "eth0" masquerade${nat === "random" ? " fully-random" : ""}`,
          "  }",
          "}",
        ].join("\n") + "\n",
      });
    }
    await this.#runner.run(["ip", "link", "set", ulSide, "master", "br0", "up"], {
      netns: this.underlay,
    });
    const dir = `${this.state.dir}/${name}`;
    for (const d of ["state", "keys", "net.d", "bin"]) {
      await Deno.mkdir(`${dir}/${d}`, { recursive: true, mode: 0o700 });
    }
    const node: LabNodeState = {
      index,
      name,
      netns,
      endpoint,
      iface: `wgd${this.state.id}n${index}`,
      dir,
      socket: `${dir}/wgcni.sock`,
      pid: 0,
      backend: "",
      pods: [],
      ...(options.joinArgs ? { joinArgs: options.joinArgs } : {}),
      ...(options.stateTmpfs ? { stateTmpfs: options.stateTmpfs } : {}),
      ...(nat ? { nat, publicAddress: underlayAddress, router: outside } : {}),
    };
    this.state.nodes.push(node);
    this.state.nodes.sort((x, y) => x.index - y.index);
    await this.startNode(node);
    return node;
  }

  /** Starts (or restarts) a node's manager and waits until its local API answers STATUS. */
  async startNode(node: LabNodeState): Promise<void> {
    const stateDir = `${node.dir}/state`;
    const inOwnMounts = node.stateTmpfs === undefined ? [] : [
      "unshare",
      "--mount",
      "--propagation",
      "slave",
      "--",
      "sh",
      "-c",
      'mount -t tmpfs -o "size=$1,mode=0700" wgcni-state "$2" || exit 1; shift 2; exec "$@"',
      "sh",
      node.stateTmpfs,
      stateDir,
    ];
    const p = await this.#start([
      ...inOwnMounts,
      ...this.#self,
      "node",
      "join",
      this.#joinUrls,
      "--token-file",
      this.#joinTokenFile,
      // The lab's underlay is a bridge inside its own namespaces.
      "--insecure",
      "--name",
      node.name,
      // Behind NAT the node finds its address itself, and the manager sees the router's.
      ...(node.nat ? [] : ["--endpoint", node.endpoint]),
      ...nodePlaceFlags(node),
      "--cni-bin-dir",
      `${node.dir}/bin`,
      ...(node.joinArgs ?? []),
    ], { netns: node.netns, logFile: `${node.dir}/node.log` });
    node.pid = p.pid;
    await this.#waitFor(`${node.name}'s node manager`, scaled(60_000), async () => {
      this.#checkAlive(p, `${node.name}'s node manager`, `${node.dir}/node.log`);
      const c = createLocalClient(node.socket);
      try {
        node.backend = String((await c.node() as { backend?: unknown }).backend ?? "");
        return true;
      } catch {
        return false;
      } finally {
        c.close();
      }
    }, `${node.dir}/node.log`);
  }

  /** Stops a node's manager: SIGTERM, or SIGKILL with `kill: true`. */
  async stopNode(node: LabNodeState, options: { kill?: boolean } = {}): Promise<void> {
    await this.#stop(node.pid, options);
  }

  async #stop(pid: number, options: { kill?: boolean }): Promise<void> {
    const p = this.#procs.get(pid);
    if (!p) return;
    if (options.kill) {
      p.kill("SIGKILL");
      await p.exited;
    } else {
      await p.stop();
    }
    this.#forget(p.pid);
  }

  /** Runs the plugin as a runtime would, with the network config the node manager wrote. */
  async plugin(
    node: LabNodeState,
    command: string,
    a: {
      containerId: string;
      ifname: string;
      netns: string;
      extra?: Record<string, unknown>;
      /** CNI_ARGS, as a runtime sends them (kubelet: `IgnoreUnknown=1;K8S_POD_NAMESPACE=…`). */
      args?: string;
    },
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    const conf = await this.netConf(
      node,
      command === "STATUS" || command === "GC" ? "1.1.0" : undefined,
    );
    const env: Record<string, string> = { CNI_COMMAND: command, CNI_PATH: `${node.dir}/bin` };
    if (a.containerId) env.CNI_CONTAINERID = a.containerId;
    if (a.ifname) env.CNI_IFNAME = a.ifname;
    if (a.netns) env.CNI_NETNS = a.netns;
    if (a.args) env.CNI_ARGS = a.args;
    return await this.#runner.exec([this.pluginPath], {
      netns: node.netns,
      env,
      stdin: JSON.stringify({ ...conf, ...a.extra }),
    });
  }

  /** The single-plugin network config from the conflist the node manager wrote. */
  async netConf(node: LabNodeState, version?: string): Promise<Record<string, unknown>> {
    let text: string;
    try {
      text = await Deno.readTextFile(`${node.dir}/net.d/${PLUGIN_CONF}`);
    } catch {
      return { cniVersion: version ?? "1.0.0", name: "wgcni", type: "wgcni", socket: node.socket };
    }
    const list = JSON.parse(text) as {
      cniVersion: string;
      name: string;
      plugins: Record<string, unknown>[];
    };
    return { ...list.plugins[0], cniVersion: version ?? list.cniVersion, name: list.name };
  }

  /** A namespace on the underlay that is not a node (an external client's machine). */
  async addHost(name: string, index: number): Promise<{ netns: string; address: string }> {
    const netns = await this.#netns(name);
    const address = `192.0.2.${200 + index}`;
    const ulSide = `v${this.state.id}h${index}`;
    await this.#runner.run(["ip", "-batch", "-"], {
      netns,
      stdin: [
        `link add eth0 type veth peer name ${ulSide} netns /run/netns/${this.underlay}`,
        `addr add ${address}/${UNDERLAY.prefixV4} dev eth0`,
        "link set eth0 up",
      ].join("\n") + "\n",
    });
    await this.#runner.run(["ip", "link", "set", ulSide, "master", "br0", "up"], {
      netns: this.underlay,
    });
    return { netns, address };
  }

  /** Runs this wgcni's command line in a namespace (e.g. `client add` from a laptop). */
  async cli(args: readonly string[], netns: string) {
    return await this.#runner.exec([...this.#self, ...args], {
      netns,
      env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
    });
  }

  /** Creates a pod namespace on `node` and attaches it with the plugin (ADD). */
  async addPod(node: LabNodeState, index: number): Promise<LabPod> {
    const name = `${node.name}-pod${index}`;
    const netns = await this.#netns(`n${node.index}p${index}`);
    const containerId = `${this.state.id}-${node.name}-pod${index}`;
    const r = await this.plugin(node, "ADD", {
      containerId,
      ifname: "eth0",
      netns: `/run/netns/${netns}`,
      // As kubelet would: the pod's namespace and name ride along.
      args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=${name}`,
    });
    if (r.code !== 0) {
      throw new Error(
        `Cannot add pod ${name}: plugin exited ${r.code}: ${r.stdout.trim() || r.stderr.trim()}`,
      );
    }
    const result = JSON.parse(r.stdout) as AddResult;
    const pod: LabPod = {
      node: node.name,
      name,
      netns,
      containerId,
      ifname: "eth0",
      addresses: (result.ips ?? []).map((ip) => ip.address.split("/")[0] as string),
    };
    node.pods.push(pod);
    return pod;
  }

  /** Detaches a pod (DEL) and deletes its namespace. */
  async deletePod(node: LabNodeState, pod: LabPod): Promise<void> {
    const r = await this.plugin(node, "DEL", {
      containerId: pod.containerId,
      ifname: pod.ifname,
      netns: `/run/netns/${pod.netns}`,
    });
    if (r.code !== 0) {
      throw new Error(`Cannot delete pod ${pod.name}: plugin exited ${r.code}: ${r.stdout.trim()}`);
    }
    await this.#runner.exec(["ip", "netns", "del", pod.netns]);
    const i = node.pods.indexOf(pod);
    if (i >= 0) node.pods.splice(i, 1);
    this.state.namespaces.splice(this.state.namespaces.indexOf(pod.netns), 1);
  }

  /** One ping from a pod's namespace; true when answered. */
  async ping(pod: LabPod, address: string, options: { count?: number; waitS?: number } = {}) {
    const r = await this.#runner.exec([
      "ping",
      "-n",
      "-q",
      "-c",
      String(options.count ?? 1),
      "-W",
      String(Math.ceil(scaled((options.waitS ?? 2) * 1000) / 1000)),
      address,
    ], { netns: pod.netns });
    return r.code === 0;
  }

  /** {@linkcode pingFlow} from a pod. */
  pingFlow(
    pod: LabPod,
    address: string,
    options: { count: number; intervalS: number; waitS?: number },
  ): Promise<[number, number]> {
    return pingFlow(this.#runner, pod.netns, address, options);
  }

  /** Writes the state for `wgcni demo --down`. */
  async save(file: string): Promise<void> {
    await Deno.writeTextFile(file, JSON.stringify(this.state, null, 2), { mode: 0o600 });
  }

  /** Removes everything the lab made: processes (by pid), namespaces, the directory. */
  async teardown(options: { keepDir?: boolean } = {}): Promise<void> {
    this.#closed = true;
    await teardownState(this.#runner, this.state, this.#procs, options);
  }

  async #netns(suffix: string): Promise<string> {
    if (this.#closed) throw new Error("The lab is being torn down");
    const name = `wgd-${this.state.id}-${suffix}`;
    await this.#runner.run(["ip", "netns", "add", name]);
    this.state.namespaces.push(name);
    await this.#runner.run(["ip", "link", "set", "lo", "up"], { netns: name });
    return name;
  }

  async #start(
    argv: string[],
    options: { netns: string; logFile: string },
  ): Promise<Started> {
    if (this.#closed) throw new Error("The lab is being torn down");
    const p = await startProcess(argv, {
      ...options,
      env: {
        WGCNI_LOG_LEVEL: Deno.env.get("WGCNI_LOG_LEVEL") ?? "info",
        NO_COLOR: "1",
        DENO_NO_UPDATE_CHECK: "1",
      },
    });
    this.#procs.set(p.pid, p);
    this.state.pids.push(p.pid);
    p.exited.then(() => this.#ended.add(p.pid));
    this.#log.debug("started {argv} as {pid}", { argv: argv.slice(-20).join(" "), pid: p.pid });
    return p;
  }

  #forget(pid: number) {
    this.#procs.delete(pid);
    const i = this.state.pids.indexOf(pid);
    if (i >= 0) this.state.pids.splice(i, 1);
  }

  #checkAlive(p: Started, what: string, logFile: string) {
    if (this.#ended.has(p.pid)) {
      let tail = "";
      try {
        tail = Deno.readTextFileSync(logFile).trim().split("\n").slice(-5).join("\n");
      } catch { /* no log */ }
      throw new Error(`The ${what} exited early:\n${tail}`);
    }
  }

  async #waitFor(
    what: string,
    timeoutMs: number,
    ready: () => Promise<boolean>,
    logFile?: string,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await ready()) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`Timed out after ${timeoutMs / 1000} s waiting for ${what}${logTail(logFile)}`);
  }
}

/**
 * Removes a lab from its state: ends its processes by pid (SIGTERM, then
 * SIGKILL), deletes its namespaces, removes its directory. Carries on past
 * failures; returns what it could not remove.
 */
export async function teardownState(
  runner: Runner,
  state: LabState,
  procs: Map<number, Started> = new Map(),
  options: { keepDir?: boolean } = {},
): Promise<string[]> {
  const problems: string[] = [];
  await Promise.all(state.pids.map(async (pid) => {
    const p = procs.get(pid);
    if (p) {
      await p.stop(3000);
      return;
    }
    // A lab from another process (--down): only pids it recorded, and only if still ours.
    try {
      const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`);
      if (!cmdline.includes("wgcni") && !cmdline.includes("cli/main.ts")) return;
      Deno.kill(pid, "SIGTERM");
      for (let i = 0; i < 30; i++) {
        await new Promise((r) => setTimeout(r, 100));
        await Deno.stat(`/proc/${pid}`);
      }
      Deno.kill(pid, "SIGKILL");
    } catch {
      // Gone.
    }
  }));
  state.pids.length = 0;
  // Pods first. Links are deleted before their namespace: a wireguard-go
  // whose UDP socket lives in the same namespace keeps it alive otherwise.
  const order = [...state.namespaces].sort((a, b) => b.length - a.length);
  for (const ns of order) {
    const problem = await removeNamespace(runner, ns);
    if (problem !== undefined) problems.push(problem);
  }
  state.namespaces.length = 0;
  if (!options.keepDir) {
    try {
      await Deno.remove(state.dir, { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) problems.push(`${state.dir}: ${String(err)}`);
    }
  }
  return problems;
}

function logTail(file: string | undefined): string {
  if (file === undefined) return "";
  try {
    return ":\n" + Deno.readTextFileSync(file).trim().split("\n").slice(-8).join("\n");
  } catch {
    return "";
  }
}

function randomId(): string {
  const b = crypto.getRandomValues(new Uint8Array(3));
  return [...b].map((x) => x.toString(36).padStart(2, "0")).join("").slice(0, 4);
}

function randomToken(): string {
  const b = crypto.getRandomValues(new Uint8Array(24));
  return btoa(String.fromCharCode(...b)).replace(/[+/=]/g, "").slice(0, 32);
}

/**
 * Deletes a network namespace, its links first (a wireguard-go whose UDP
 * socket lives in the namespace would keep it alive otherwise). Returns what
 * went wrong, or undefined when it is gone (or was never there).
 */
export async function removeNamespace(runner: Runner, ns: string): Promise<string | undefined> {
  const links = await runner.exec(["ip", "-j", "link", "show"], { netns: ns });
  if (links.code === 0) {
    for (const l of JSON.parse(links.stdout || "[]") as { ifname: string }[]) {
      if (l.ifname !== "lo") await runner.exec(["ip", "link", "del", l.ifname], { netns: ns });
    }
  }
  const r = await runner.exec(["ip", "netns", "del", ns]);
  return r.code !== 0 && !/No such file/.test(r.stderr)
    ? `netns ${ns}: ${r.stderr.trim()}`
    : undefined;
}
