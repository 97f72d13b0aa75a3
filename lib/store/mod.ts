/**
 * The cluster store: its interface, its rules (pure functions of a view that
 * return change sets) and the embedded engines. The etcd engine is imported
 * from `./cluster_etcd.ts` where it is needed, so that its client library
 * loads only then.
 */
export * from "./cluster_store.ts";
export * from "./cluster_view.ts";
export * as rules from "./cluster_rules.ts";
export { ClusterPools, normalizePools, PoolLayout, type PoolSlot } from "./cluster_pools.ts";
export { MemoryClusterState } from "./cluster_state.ts";
export { MemoryClusterStore } from "./cluster_memory.ts";
export {
  readStoredPools,
  SqliteClusterStore,
  type SqliteClusterStoreOptions,
} from "./cluster_sqlite.ts";
export type { EngineOptions } from "./_engine.ts";
