/** Running the networking tools: the one runner interface and its implementations. */
export * from "./runner.ts";
export * from "./process.ts";
export * from "./netns.ts";
export * from "./sockets.ts";
export * from "./link.ts";
