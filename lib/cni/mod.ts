/** CNI protocol pieces shared by the plugin and the node manager. */
export * from "./version.ts";
export * from "./errors.ts";
export * from "./result.ts";
export * from "./validate.ts";
