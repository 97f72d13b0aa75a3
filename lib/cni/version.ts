/** CNI versions and result conversion between them. Dependency-free (the plugin path imports it). */
import { CNI_VERSIONS } from "../version.ts";
import type { CniResult } from "../domain/cni.ts";
import { familyOf } from "../domain/address.ts";

/** Compares two versions `a.b.c`: negative, zero or positive. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** True when wgcni speaks this version. */
export function isSupported(version: string): boolean {
  return (CNI_VERSIONS as readonly string[]).includes(version);
}

/** The first version in which a command exists. */
export const COMMAND_SINCE: Readonly<Record<string, string>> = {
  ADD: "0.1.0",
  DEL: "0.1.0",
  VERSION: "0.1.0",
  CHECK: "0.4.0",
  STATUS: "1.1.0",
  GC: "1.1.0",
};

type Json = Record<string, unknown>;

const ROUTE_11 = ["mtu", "advmss", "priority", "table", "scope"];
const IFACE_11 = ["mtu", "socketPath", "pciID"];

function omit(o: Json, keys: readonly string[]): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(o)) if (!keys.includes(k)) out[k] = v;
  return out;
}

function versionOf(address: string): "4" | "6" {
  return familyOf(address) === 6 ? "6" : "4";
}

/**
 * A 1.1.0-shaped result in exactly the shape of `version`: `ips[].version`
 * for 0.3.x/0.4.0, none from 1.0.0 on; fields new in 1.1.0 only in 1.1.0.
 */
export function convertResult(result: CniResult, version: string): Json {
  const old = compareVersions(version, "1.0.0") < 0;
  const pre11 = compareVersions(version, "1.1.0") < 0;
  const out: Json = { cniVersion: version };
  if (result.interfaces) {
    out.interfaces = result.interfaces.map((i) => pre11 ? omit({ ...i }, IFACE_11) : { ...i });
  }
  if (result.ips) {
    out.ips = result.ips.map((ip) => {
      const o: Json = { ...ip };
      delete o.version;
      return old ? { version: versionOf(ip.address), ...o } : o;
    });
  }
  if (result.routes) {
    out.routes = result.routes.map((r) => pre11 ? omit({ ...r }, ROUTE_11) : { ...r });
  }
  out.dns = result.dns ?? {};
  return out;
}
