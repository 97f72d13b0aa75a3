/**
 * `wgcni node leave`: deregister from the cluster, then remove the node
 * interface, wgcni's nftables table, the conflist and the pod state. The
 * node key stays, so the machine keeps its identity if it joins again.
 * Attached pods make it refuse unless `force`, which detaches them first.
 */
import type { Logger } from "../../lib/log.ts";
import { SystemRunner } from "../../lib/ip/runner.ts";
import { WireGuardControl } from "../../lib/wireguard/mod.ts";
import { createClusterClient } from "../../lib/api/cluster_client.ts";
import { createLocalClient } from "../../lib/api/local_client.ts";
import { openDatabase } from "../../lib/store/sqlite_ipam.ts";
import { NodeStateStore } from "../../lib/store/node_state.ts";
import { loadCredential, loadOrCreateKey, removeCredential } from "./key.ts";
import { teardownNodeNetwork } from "./netsetup.ts";
import { uninstallCni } from "./conflist.ts";
import { PodManager } from "./pods.ts";
import { openPodAddresses } from "./addresses.ts";
import type { RegisterResponse } from "../../lib/api/cluster_types.ts";

export interface LeaveConfig {
  readonly iface: string;
  readonly stateDir: string;
  readonly keyDir: string;
  readonly socket: string;
  readonly cniConfDir: string;
  readonly force: boolean;
  readonly caCert: string | undefined;
}

export async function leave(
  config: LeaveConfig,
  io: { logger: Logger; print: (s: string) => void },
) {
  const local = createLocalClient(config.socket);
  const running = await local.node().then(() => true, () => false);
  local.close();
  if (running) {
    throw new Error(
      `Cannot leave while the node manager is running (it answers on ${config.socket}); stop it first`,
    );
  }
  const runner = new SystemRunner();
  const wg = new WireGuardControl(runner, { logger: io.logger });
  const dbPath = `${config.stateDir}/node.db`;
  const hasState = await Deno.stat(dbPath).then(() => true, () => false);
  if (hasState) {
    const db = openDatabase(dbPath);
    const store = new NodeStateStore(db);
    const pods = store.all();
    if (pods.length && !config.force) {
      db.close();
      throw new Error(
        `Cannot leave: ${pods.length} pod(s) are attached (${
          pods.map((p) => `${p.containerId}/${p.ifname}`).join(", ")
        }); delete them first or pass --force to detach them`,
      );
    }
    // Workloads with their own interface lose their peer with the node interface.
    const workloads = store.workloads();
    if (workloads.length && !config.force) {
      db.close();
      throw new Error(
        `Cannot leave: ${workloads.length} workload(s) are attached (${
          workloads.map((w) => w.name).join(", ")
        }); detach them first (wgcni node detach NAME) or pass --force`,
      );
    }
    const reg = JSON.parse(store.meta("registration") ?? "null") as RegisterResponse | null;
    if (pods.length && reg) {
      const key = await loadOrCreateKey(config.keyDir);
      const manager = new PodManager({
        runner,
        wg,
        logger: io.logger,
        store,
        addresses: openPodAddresses(db, reg.node.subnets),
        nodeInterface: config.iface,
        nodePublicKey: key.publicKey,
        nodeListenPort: 0,
        mtu: 1420,
      });
      for (const p of pods) await manager.del(p);
      io.print(`detached ${pods.length} pod(s)`);
    }
    db.close();
  }
  const cred = await loadCredential(config.keyDir);
  if (cred) {
    let done = false;
    for (const url of cred.clusterUrls) {
      const client = createClusterClient(url, {
        token: cred.credential,
        ...(config.caCert ? { caCert: config.caCert } : {}),
      });
      try {
        await client.leave(cred.name);
        done = true;
        io.print(`left the cluster at ${url} as ${cred.name}`);
        break;
      } catch (err) {
        io.logger.warn("cannot deregister at {url}: {error}", { url, error: err });
      } finally {
        client.close();
      }
    }
    if (!done) {
      throw new Error(
        "Cannot leave: no cluster manager accepted the deregistration; nothing was removed",
      );
    }
    await removeCredential(config.keyDir);
  } else {
    io.print("not registered (no stored credential); removing local state only");
  }
  await teardownNodeNetwork({ runner, wg, iface: config.iface });
  await uninstallCni({ confDir: config.cniConfDir });
  for (const f of ["node.db", "node.db-wal", "node.db-shm"]) {
    await Deno.remove(`${config.stateDir}/${f}`).catch(() => {});
  }
  await Deno.remove(config.socket).catch(() => {});
  io.print(`removed ${config.iface}, the nftables table, the conflist and the pod state`);
}
