/**
 * Real etcd clusters for tests: one or more members on free loopback ports,
 * data in a temp dir, each member its own process (stopped, killed and
 * restarted by pid), everything removed on dispose.
 */

/** Whether an `etcd` binary is on the PATH. */
export function hasEtcd(): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", "command -v etcd"], stdout: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** A loopback port nothing listens on right now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface Member {
  readonly name: string;
  readonly client: string;
  readonly peer: string;
  child: Deno.ChildProcess | undefined;
}

/** A running etcd cluster. */
export interface EtcdCluster extends AsyncDisposable {
  /** Client URLs, one per member (`http://127.0.0.1:PORT`). */
  readonly endpoints: readonly string[];
  /** The members' process ids (0 for a stopped one). */
  pids(): number[];
  /** Kills member `i` (SIGKILL) and waits for it to end. */
  kill(i: number): Promise<void>;
  /** Starts member `i` again on its data and waits until it answers. */
  restart(i: number): Promise<void>;
}

/** Starts an etcd cluster of `size` members and waits until every member answers. */
export async function startEtcd(size = 1): Promise<EtcdCluster> {
  const dir = Deno.makeTempDirSync({ prefix: "wgcni-etcd-test-" });
  const members: Member[] = [];
  for (let i = 0; i < size; i++) {
    members.push({
      name: `m${i}`,
      client: `http://127.0.0.1:${freePort()}`,
      peer: `http://127.0.0.1:${freePort()}`,
      child: undefined,
    });
  }
  const initial = members.map((m) => `${m.name}=${m.peer}`).join(",");
  const logs = new Map<string, string>();

  const spawn = (m: Member) => {
    m.child = new Deno.Command("etcd", {
      args: [
        "--name",
        m.name,
        "--data-dir",
        `${dir}/${m.name}`,
        "--listen-client-urls",
        m.client,
        "--advertise-client-urls",
        m.client,
        "--listen-peer-urls",
        m.peer,
        "--initial-advertise-peer-urls",
        m.peer,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        dir,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--log-level",
        "error",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const name = m.name;
    logs.set(name, "");
    void (async () => {
      for await (const t of m.child!.stderr.pipeThrough(new TextDecoderStream())) {
        logs.set(name, (logs.get(name)! + t).slice(-4000));
      }
    })().catch(() => {});
  };

  const healthy = async (m: Member, timeoutMs = 20_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const r = await fetch(`${m.client}/health`, { signal: AbortSignal.timeout(1000) });
        const body = await r.json() as { health?: string };
        if (body.health === "true") return;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) {
        throw new Error(`etcd member ${m.name} did not become healthy:\n${logs.get(m.name)}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const kill = async (m: Member) => {
    const child = m.child;
    if (child === undefined) return;
    m.child = undefined;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
  };

  try {
    for (const m of members) spawn(m);
    await Promise.all(members.map((m) => healthy(m)));
  } catch (err) {
    for (const m of members) await kill(m);
    Deno.removeSync(dir, { recursive: true });
    throw err;
  }
  return {
    endpoints: members.map((m) => m.client),
    pids: () => members.map((m) => m.child?.pid ?? 0),
    kill: (i) => kill(members[i]!),
    restart: async (i) => {
      const m = members[i]!;
      await kill(m);
      spawn(m);
      await healthy(m);
    },
    [Symbol.asyncDispose]: async () => {
      for (const m of members) await kill(m);
      Deno.removeSync(dir, { recursive: true });
    },
  };
}
