/** WireGuard: keys, configuration rendering and parsing, and interface control. */
export * from "./keys.ts";
export * from "./types.ts";
export * from "./dump.ts";
export * from "./wg_quick.ts";
export * from "./control.ts";
export { type DeviceControl, uapiSetRequest, UapiSocket, wgSetArgs, WgTool } from "./device.ts";
export { checkCidr, checkEndpoint, isIp } from "./validate.ts";
