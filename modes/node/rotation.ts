/**
 * The node's key rotation, without a flow noticing. A rotation:
 *
 * 1. makes the next key pair and keeps the private key beside the current
 *    one (`next.key`, 0600, written before anyone hears of it);
 * 2. announces the public key to the cluster with a moment a few seconds
 *    ahead (see `NextKey`): every node adds it as a peer with no allowed
 *    IPs, and this node gives it to its pods the same way, with no
 *    endpoint, so that this node's first handshake under it is answered
 *    and nobody starts one of their own toward it;
 * 3. at that moment this node takes the new private key, moves its pods'
 *    routes to the new key, and sends one datagram to each node and pod,
 *    which starts every handshake under the new key from this side; the
 *    other nodes, at the same moment, wait for that handshake and then move
 *    this node's allowed IPs to the new key's peer (mesh.ts);
 * 4. makes the next key the node's key on disk and registers with it, which
 *    ends the rotation in the cluster: the old key is gone everywhere.
 *
 * Only this node starts handshakes: two started at once from both ends of a
 * pair can cross, and WireGuard then tries again only five seconds later.
 * What is sent while a handshake runs waits in WireGuard's queue; what is
 * lost is what crosses a node before it moved (milliseconds). A rotation
 * cut short (a crash) is finished at the next start from what the files
 * and the cluster say (see {@linkcode settleRotation}).
 */
import dgram from "node:dgram";
import type { Logger } from "../../lib/log.ts";
import type { NextKey, NodeInfo, PeerEntry } from "../../lib/domain/cluster.ts";
import { ConflictError } from "../../lib/errors.ts";
import type { RotationAnswer } from "../../lib/api/local_types.ts";
import { generateKeyPair } from "../../lib/wireguard/mod.ts";
import { gatewayOf } from "./netsetup.ts";
import { SWITCH_WAIT_MS } from "./mesh.ts";
import { dropNextKey, loadNextKey, type NodeKey, promoteNextKey, saveNextKey } from "./key.ts";

/** How far ahead of the announcement peers switch, by default: propagation to every node fits. */
export const DEFAULT_SWITCH_LEAD_MS = 5_000;

/** How often the rotating node looks for its pods' answers under the new key. */
const ANSWER_POLL_MS = 10;

/** How long a pod whose answer cannot be told from its last handshake is given. */
const SAME_SECOND_MS = 100;

/** The port the datagram that starts each new handshake goes to (discard: nobody answers). */
const POKE_PORT = 9;

export interface KeyRotationOptions {
  readonly keyDir: string;
  readonly logger: Logger;
  /** Sets the node interface's private key. */
  readonly setPrivateKey: (privateKey: string) => Promise<void>;
  /** Tells the cluster the next key and its moment. */
  readonly announce: (next: NextKey) => Promise<void>;
  /** Registers with the new key (the end of the rotation in the cluster). */
  readonly register: (publicKey: string) => Promise<void>;
  /** The node peers to start new handshakes with. */
  readonly nodes: () => readonly PeerEntry[] | undefined;
  /** Moves the pods' node peer from the old key to the new one; returns how many. */
  readonly movePods: (from: string, to: string) => Promise<number>;
  /** The pods' node peer once they answered: its endpoint and keep-alive. */
  readonly settlePods?: () => Promise<number>;
  /** Gives the pods the next key as a peer with no allowed IPs, ahead of the switch. */
  readonly preparePods?: (next: string) => Promise<number>;
  /** The pods' addresses: a datagram to each starts its handshake under the new key. */
  readonly podAddresses?: () => readonly string[];
  /** The latest handshake of each pod's peer on the node interface (seconds), by public key. */
  readonly podHandshakes?: () => Promise<ReadonlyMap<string, number>>;
  /** The node's key changed: what else holds it takes the new one; returns the workloads attached. */
  readonly changed: (key: NodeKey) => number;
  /** Gives pods whose key is at least this old a new one; returns how many. */
  readonly rotatePods?: (maxAgeMs: number) => Promise<number>;
  /** How far ahead of its announcement peers switch (default {@linkcode DEFAULT_SWITCH_LEAD_MS}). */
  readonly leadMs?: number;
  readonly now?: () => number;
  readonly sleep?: (ms: number) => Promise<void>;
}

/** Rotates the node's key, one rotation at a time. */
export class KeyRotation {
  readonly #o: KeyRotationOptions;
  #key: NodeKey;
  #under: { readonly to: string; readonly switchAt: number } | undefined;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  constructor(key: NodeKey, options: KeyRotationOptions) {
    this.#key = key;
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** The node's key now. */
  get key(): NodeKey {
    return this.#key;
  }

  /** The rotation under way, if any. */
  get under(): { readonly to: string; readonly switchAt: number } | undefined {
    return this.#under;
  }

  /**
   * Rotates: a new key, announced `leadMs` ahead, switched to at that
   * moment. ConflictError while another rotation is under way; a failed
   * announcement changes nothing (the next key file is dropped).
   */
  async rotate(
    leadMs = this.#o.leadMs ?? DEFAULT_SWITCH_LEAD_MS,
    options: { readonly pods?: boolean } = {},
  ): Promise<RotationAnswer> {
    if (this.#under !== undefined) {
      throw new ConflictError(
        `Cannot rotate the node key: a rotation to ${this.#under.to} is under way (switch at ${
          new Date(this.#under.switchAt).toISOString()
        })`,
      );
    }
    const next = await generateKeyPair();
    const switchAt = this.#now() + leadMs;
    this.#under = { to: next.publicKey, switchAt };
    try {
      await saveNextKey(this.#o.keyDir, next.privateKey);
      await this.#o.announce({ publicKey: next.publicKey, switchAt });
      await this.#o.preparePods?.(next.publicKey);
    } catch (err) {
      this.#under = undefined;
      await dropNextKey(this.#o.keyDir);
      throw err;
    }
    this.#o.logger.info("rotating the node key to {key}: switch at {at}", {
      key: next.publicKey,
      at: new Date(switchAt).toISOString(),
    });
    const r = await this.#finish(next, switchAt);
    if (!options.pods || this.#o.rotatePods === undefined) return r;
    return { ...r, podKeys: await this.#o.rotatePods(0) };
  }

  /** Finishes a rotation announced before a restart, at its moment (now, when it passed). */
  async resume(next: NodeKey, switchAt: number): Promise<RotationAnswer> {
    this.#under = { to: next.publicKey, switchAt };
    await this.#o.preparePods?.(next.publicKey).catch(() => 0);
    this.#o.logger.info("resuming the rotation to key {key}: switch at {at}", {
      key: next.publicKey,
      at: new Date(switchAt).toISOString(),
    });
    return await this.#finish(next, switchAt);
  }

  /**
   * Rotates the node's key every `lifetimeMs`, counted from when the current
   * key was made (`madeAt`), and gives each pod a new key once its own is
   * that old, until `signal`. Looks a few times per lifetime (at most
   * hourly); a failed node rotation is tried again a minute on.
   */
  async run(lifetimeMs: number, madeAt: number, signal: AbortSignal): Promise<void> {
    let due = madeAt + lifetimeMs;
    const every = Math.min(Math.max(lifetimeMs / 4, 10), 3_600_000);
    while (!signal.aborted) {
      await abortableSleep(Math.max(0, Math.min(due, this.#now() + every) - this.#now()), signal);
      if (signal.aborted) return;
      if (this.#under === undefined && this.#now() >= due) {
        try {
          await this.rotate();
          due = this.#now() + lifetimeMs;
        } catch (err) {
          this.#o.logger.error("scheduled key rotation failed, trying again in a minute: {error}", {
            error: err,
          });
          due = this.#now() + 60_000;
        }
      }
      const pods = await this.#o.rotatePods?.(lifetimeMs).catch(() => 0) ?? 0;
      if (pods > 0) this.#o.logger.info("{n} pods got a new key", { n: pods });
    }
  }

  /**
   * Registers with the new key. The switch is done whether the cluster
   * hears of it or not (every node switched at the moment it was told); a
   * manager that cannot be reached is asked again every 5 s in the
   * background, and a restart registers with the key on disk, the new one,
   * anyway.
   */
  async #register(publicKey: string): Promise<void> {
    try {
      return await this.#o.register(publicKey);
    } catch (err) {
      this.#o.logger.warn(
        "cannot register the new key yet ({error}); the switch is done, trying again every 5 s",
        { error: err },
      );
    }
    void (async () => {
      for (let i = 1; i < REGISTER_TRIES && this.#key.publicKey === publicKey; i++) {
        await this.#sleep(5_000);
        try {
          return await this.#o.register(publicKey);
        } catch {
          // Said once above.
        }
      }
    })();
  }

  /**
   * Waits until each pod has answered this node's handshake under the new
   * key (its peer's latest handshake is newer than `before`), so that its
   * keep-alive, set after, finds a session rather than starting a handshake.
   * Handshakes count in whole seconds, so a pod whose last one was in the
   * second of the switch is given {@linkcode SAME_SECOND_MS}. At most
   * {@linkcode SWITCH_WAIT_MS}; nothing waits on it but the keep-alive.
   */
  async #answered(before: ReadonlyMap<string, number>, switched: number): Promise<void> {
    const second = Math.floor(switched / 1000);
    const deadline = switched + SWITCH_WAIT_MS;
    for (;;) {
      const now = await this.#o.podHandshakes!().catch(() => undefined);
      const late = Date.now() - switched >= SAME_SECOND_MS;
      const waiting = [...before].filter(([k, t]) =>
        now?.has(k) && !(now.get(k)! > t) && !(t >= second && late)
      );
      if (waiting.length === 0 || Date.now() >= deadline) return;
      await new Promise((r) => setTimeout(r, ANSWER_POLL_MS));
    }
  }

  async #finish(next: NodeKey, switchAt: number): Promise<RotationAnswer> {
    const from = this.#key.publicKey;
    try {
      await this.#sleep(Math.max(0, switchAt - this.#now()));
      const before = await this.#o.podHandshakes?.().catch(() => undefined);
      const switched = Date.now();
      // The pods route to the new key as the node takes it (each side drops
      // what the other sends until both have moved, so the two go at once);
      // it has no endpoint in a pod, so a pod queues rather than starts a
      // handshake. This node starts every handshake under the new key: the
      // pods and the other nodes answer with the next key they hold (the
      // nodes move to it once it has a session), so no two handshakes cross.
      const [set, moved] = await Promise.allSettled([
        this.#o.setPrivateKey(next.privateKey),
        this.#o.movePods(from, next.publicKey),
      ]);
      if (set.status === "rejected") {
        // The node kept its key: so do the pods, with its endpoint again.
        if (moved.status === "fulfilled") {
          await this.#o.movePods(next.publicKey, from);
          await this.#o.settlePods?.();
        }
        throw set.reason;
      }
      if (moved.status === "rejected") throw moved.reason;
      const pods = moved.value;
      this.#key = next;
      const workloads = this.#o.changed(next);
      await poke([
        ...(this.#o.nodes() ?? []).flatMap((n) => n.kind === "node" ? gatewaysOf(n) : []),
        ...(this.#o.podAddresses?.() ?? []),
      ], this.#o.logger);
      if (before !== undefined) await this.#answered(before, switched);
      await this.#o.settlePods?.();
      await promoteNextKey(this.#o.keyDir);
      await this.#register(next.publicKey);
      this.#o.logger.info("node key rotated: {from} → {to} ({pods} pods moved)", {
        from,
        to: next.publicKey,
        pods,
      });
      if (workloads > 0) {
        this.#o.logger.warn(
          "{n} workloads with their own interface hold the old node key; each takes the new one from `wgcni node attach` again",
          { n: workloads },
        );
      }
      return { from, to: next.publicKey, switchAt, pods, workloads };
    } finally {
      this.#under = undefined;
    }
  }
}

/** Registration attempts with a new key before it is left to the next start (5 s apart). */
const REGISTER_TRIES = 60;

/** A node's gateway, where a datagram through the node interface reaches it. */
function gatewaysOf(n: PeerEntry): string[] {
  const gw = n.allowedIps.length > 0 ? gatewayOf(n.allowedIps[0]!) : "";
  return gw ? [gw] : [];
}

/**
 * One datagram through the node interface to each address (other nodes'
 * gateways, this node's pods): each makes WireGuard start the handshake
 * under the new key at once, rather than when traffic next goes that way.
 */
async function poke(targets: readonly string[], log: Logger): Promise<void> {
  const byFamily = [
    targets.filter((t) => !t.includes(":")),
    targets.filter((t) => t.includes(":")),
  ];
  for (const [i, list] of byFamily.entries()) {
    if (list.length === 0) continue;
    const socket = dgram.createSocket(i === 0 ? "udp4" : "udp6");
    try {
      await Promise.all(
        list.map((host) =>
          new Promise<void>((resolve) =>
            socket.send(new Uint8Array([0]), POKE_PORT, host, (err) => {
              if (err) {
                log.debug("cannot start a handshake toward {host}: {error}", { host, error: err });
              }
              resolve();
            })
          )
        ),
      );
    } finally {
      socket.close();
    }
  }
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

/**
 * What a rotation cut short left, settled at start from the next key file
 * and what the cluster says of this node (`node`, its registration):
 *
 * - the cluster holds the file's key as the next one, its moment passed:
 *   the file's key is the node's key now (returned as `key`, and to be
 *   registered with);
 * - its moment is ahead: the rotation goes on (`resume`);
 * - the cluster knows nothing of it: the file goes.
 */
export async function settleRotation(
  keyDir: string,
  key: NodeKey,
  node: Pick<NodeInfo, "publicKey" | "nextKey">,
  now: number,
): Promise<{ key: NodeKey; switched: boolean; resume?: { next: NodeKey; switchAt: number } }> {
  const next = await loadNextKey(keyDir);
  if (next === undefined) return { key, switched: false };
  const announced = node.nextKey;
  if (announced?.publicKey !== next.publicKey) {
    await dropNextKey(keyDir);
    return { key, switched: false };
  }
  if (announced.switchAt > now) {
    return { key, switched: false, resume: { next, switchAt: announced.switchAt } };
  }
  await promoteNextKey(keyDir);
  return { key: next, switched: true };
}
