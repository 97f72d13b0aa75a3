/**
 * `wgcni cluster migrate --from DIR --to etcd://…`: copies the embedded store
 * of a data directory (nodes, clients, subnets, grace periods, tokens as
 * hashes, flags) into an empty etcd prefix. The source is opened exclusively,
 * so no manager can change it meanwhile, and is left as it was.
 */
import { join } from "node:path";
import type { Logger } from "../../lib/log.ts";
import { StoreCorruptError } from "../../lib/errors.ts";
import { readStoredPools } from "../../lib/store/cluster_sqlite.ts";
import type { StoreDump } from "../../lib/store/cluster_store.ts";
import { type EtcdConnection, importDump } from "../../lib/store/cluster_etcd.ts";
import { DATA_FILES, openClusterState } from "./state.ts";

/** What was moved. */
export interface MigrateSummary {
  readonly nodes: number;
  readonly clients: number;
  readonly tokens: number;
  readonly quarantined: number;
  readonly keys: number;
}

/** Reads the whole embedded store of `dataDir`; StoreCorruptError when there is none. */
export function readEmbeddedStore(dataDir: string, logger: Logger): StoreDump {
  const dbPath = join(dataDir, DATA_FILES.database);
  try {
    Deno.statSync(dbPath);
  } catch {
    throw new StoreCorruptError(
      `Cannot migrate from ${dataDir}: it holds no ${DATA_FILES.database}`,
    );
  }
  // Opened with the pools it was made with, so that its allocations read back as they are.
  const pools = readStoredPools(dbPath);
  if (pools === undefined) {
    throw new StoreCorruptError(`Cannot migrate from ${dbPath}: it records no pools`);
  }
  const store = openClusterState(dataDir, { pools, graceMs: 0, logger });
  try {
    return store.dump();
  } finally {
    store.close();
  }
}

/** Moves the embedded store of `dataDir` into etcd; ConflictError when the target is not empty. */
export async function migrate(
  dataDir: string,
  target: EtcdConnection,
  logger: Logger,
): Promise<MigrateSummary> {
  const dump = readEmbeddedStore(dataDir, logger);
  const keys = await importDump(target, dump);
  return {
    nodes: dump.nodes.length,
    clients: dump.clients.length,
    tokens: dump.tokens.length,
    quarantined: dump.quarantine.length,
    keys,
  };
}
