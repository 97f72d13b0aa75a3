/**
 * `wgcni node attach|detach`: a workload that brings its own WireGuard
 * interface joins this node through the three steps of the node's local API
 * (allocate, register its public key, read its peers), and the command prints
 * what the workload configures its interface with. Only the public key is
 * ever given; the private key stays with the workload.
 */
import { createLocalClient } from "../../lib/api/local_client.ts";
import type { RotationAnswer, WorkloadPeers, WorkloadReleased } from "../../lib/api/local_types.ts";
import { checkCidr, checkEndpoint, parseKey } from "../../lib/wireguard/mod.ts";

/** What the workload's interface sends to the node. */
export type AllowedIpsChoice = "default" | "cluster";

export interface AttachConfig {
  readonly socket: string;
  readonly name: string;
  readonly publicKey: string;
  /** The workload's UDP port on the node's loopback (its socket is in the node's namespace). */
  readonly endpointPort?: number;
  readonly format: "wg-quick" | "json";
  /** `default`: everything through the node (0.0.0.0/0, ::/0); `cluster`: the cluster's pools. */
  readonly allowedIps: AllowedIpsChoice;
}

/** What a workload configures its interface with, as `--format json` prints it. */
export interface WorkloadConfig {
  readonly name: string;
  readonly publicKey: string;
  /** Its /32 and /128: the addresses of its interface. */
  readonly addresses: readonly string[];
  readonly mtu: number;
  /** The port its socket listens on, when it said (set it as its ListenPort). */
  readonly listenPort?: number;
  readonly peers: readonly {
    readonly name: string;
    readonly publicKey: string;
    readonly endpoint: string;
    readonly allowedIps: readonly string[];
    readonly persistentKeepalive: number;
  }[];
}

/** Thrown when the node manager cannot be reached; names the socket. */
async function client(socket: string) {
  try {
    await Deno.stat(socket);
  } catch {
    throw new Error(
      `Cannot reach the node manager: no socket at ${socket} (is \`wgcni node join\` running on this node? give --socket if it listens elsewhere)`,
    );
  }
  return createLocalClient(socket);
}

/**
 * Runs the three steps and returns the workload's configuration. A
 * registration that is refused releases the addresses this call allocated,
 * so a refused attach leaves nothing behind.
 */
export async function attach(config: AttachConfig): Promise<WorkloadConfig> {
  const c = await client(config.socket);
  try {
    const got = await c.workloads.allocate(config.name);
    try {
      await c.workloads.register(config.name, {
        publicKey: config.publicKey,
        ...(config.endpointPort !== undefined ? { endpointPort: config.endpointPort } : {}),
      });
    } catch (err) {
      if (got.created) await c.workloads.release(config.name).catch(() => {});
      throw err;
    }
    return workloadConfig(await c.workloads.peers(config.name), config);
  } finally {
    c.close();
  }
}

/** Removes a workload from the node (nothing to do is no error). */
export async function detach(config: { socket: string; name: string }): Promise<WorkloadReleased> {
  const c = await client(config.socket);
  try {
    return await c.workloads.release(config.name);
  } finally {
    c.close();
  }
}

/** The node's answer as the workload's configuration. */
export function workloadConfig(
  p: WorkloadPeers,
  config: Pick<AttachConfig, "publicKey" | "endpointPort" | "allowedIps">,
): WorkloadConfig {
  return {
    name: p.name,
    publicKey: config.publicKey,
    addresses: p.addresses,
    mtu: p.mtu,
    ...(config.endpointPort !== undefined ? { listenPort: config.endpointPort } : {}),
    peers: p.peers.map((peer) => ({
      ...peer,
      allowedIps: config.allowedIps === "cluster" ? p.clusterCidrs : peer.allowedIps,
    })),
  };
}

/**
 * A wg-quick file without a PrivateKey line: a comment says where the
 * workload's own key goes. Values are checked as they would be for `wg`.
 */
export function renderWorkloadWgQuick(w: WorkloadConfig): string {
  const out = [
    `# wgcni workload ${w.name}`,
    "[Interface]",
    `# PrivateKey = <the workload's private key, of public key ${
      parseKey(w.publicKey, "public key")
    }>`,
    "#   (put it here, or set it with `wg set IFACE private-key FILE`: it never passes through wgcni)",
    `Address = ${w.addresses.map((a) => checkCidr(a, "address")).join(", ")}`,
    `MTU = ${w.mtu}`,
  ];
  if (w.listenPort !== undefined) out.push(`ListenPort = ${w.listenPort}`);
  for (const p of w.peers) {
    out.push(
      "",
      "[Peer]",
      `# ${p.name}`,
      `PublicKey = ${parseKey(p.publicKey, "peer public key")}`,
      `Endpoint = ${checkEndpoint(p.endpoint)}`,
      `AllowedIPs = ${p.allowedIps.map((a) => checkCidr(a)).join(", ")}`,
      `PersistentKeepalive = ${p.persistentKeepalive}`,
    );
  }
  return out.join("\n") + "\n";
}

/** `wgcni node rotate-key`: asks the node manager to rotate its key, and waits for the switch. */
export async function rotateKey(
  o: { socket: string; leadMs?: number; pods?: boolean },
): Promise<RotationAnswer> {
  const c = await client(o.socket);
  try {
    return await c.rotateKey(o.leadMs, o.pods ? { pods: true } : {});
  } finally {
    c.close();
  }
}
