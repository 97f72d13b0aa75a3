/** Address management: dual-stack arithmetic, allocators and their store interface. */
export * from "./cidr.ts";
export * from "./store.ts";
export * from "./allocator.ts";
export * from "./special.ts";
export * from "./draft.ts";
