/**
 * What the kernel knows of this node's pods, for a node manager whose store
 * lost some (emptied, or rolled back by a torn WAL): every pod is a peer of
 * the node interface with exactly its /32 and /128 inside this node's
 * subnets and an endpoint on loopback (its interface's socket in the node's
 * namespace), and that socket stays bound while the pod interface lives.
 */
import type { PeerState } from "../../lib/wireguard/mod.ts";
import { contains, formatAddress, parseCidr } from "../../lib/ipam/mod.ts";

/** A pod as the node interface's peers show it. */
export interface KernelPod {
  readonly publicKey: string;
  /** No prefix, IPv4 first. */
  readonly addresses: readonly string[];
  /** The pod interface's UDP port in the node's namespace. */
  readonly listenPort: number;
}

/** The reservation owner of a pod known only from the kernel. */
export function kernelOwner(publicKey: string): string {
  return `kernel:${publicKey}`;
}

/** Whether a reservation owner stands for a pod known only from the kernel. */
export function isKernelOwner(owner: string): boolean {
  return owner.startsWith("kernel:");
}

const LOOPBACK = /^(?:127\.0\.0\.1|\[::1\]):(\d{1,5})$/;

/** The peers of the node interface that are pods of this node, by public key. */
export function kernelPods(
  peers: readonly PeerState[],
  subnets: readonly string[],
): Map<string, KernelPod> {
  const own = subnets.map(parseCidr);
  const out = new Map<string, KernelPod>();
  for (const p of peers) {
    const port = Number(p.endpoint?.match(LOOPBACK)?.[1] ?? 0);
    if (port < 1 || port > 65535 || p.allowedIps.length === 0) continue;
    const byFamily = new Map<4 | 6, string>();
    let pod = true;
    for (const cidr of p.allowedIps) {
      let c;
      try {
        c = parseCidr(cidr);
      } catch {
        pod = false;
        break;
      }
      const host = c.prefix === (c.family === 4 ? 32 : 128);
      const address = formatAddress(c.family, c.base);
      const mine = own.some((s) => s.family === c.family && contains(s, c));
      if (!host || !mine || byFamily.has(c.family)) {
        pod = false;
        break;
      }
      byFamily.set(c.family, address);
    }
    if (!pod) continue;
    const addresses = [byFamily.get(4), byFamily.get(6)].filter((a): a is string => !!a);
    out.set(p.publicKey, { publicKey: p.publicKey, addresses, listenPort: port });
  }
  return out;
}

/**
 * Decides which pods' sockets prove them alive: a port that is bound and
 * that no other pod (peer or record) names. A port two pods name proves
 * neither (the old one's was reused) unless one is the record that owns it.
 */
export class Liveness {
  readonly #bound: ReadonlySet<number>;
  readonly #claims = new Map<number, Set<string>>();

  constructor(bound: ReadonlySet<number>, claims: Iterable<{ key: string; port: number }>) {
    this.#bound = bound;
    for (const { key, port } of claims) {
      if (port <= 0) continue;
      const keys = this.#claims.get(port) ?? new Set<string>();
      keys.add(key);
      this.#claims.set(port, keys);
    }
  }

  /** Whether the pod with `key` and `port` provably still has its interface. */
  alive(key: string, port: number): boolean {
    if (port <= 0 || !this.#bound.has(port)) return false;
    const others = [...(this.#claims.get(port) ?? [])].filter((k) => k !== key);
    return others.length === 0;
  }
}
