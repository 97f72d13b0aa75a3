/**
 * What a node remembers of the cluster it follows, so that it never follows
 * a cluster manager blindly: the cluster's id (kept with the credential, on
 * persistent disk) and the highest revision it applied (in the node's state).
 * A manager that answers for another cluster (its store was replaced or
 * emptied), or whose snapshot is behind what the node already applied (its
 * store lost commits), is refused: peers, routes and pods stay as they are.
 */
import type { NodeStateStore } from "../../lib/store/node_state.ts";

/** A cluster manager this node must not follow; the message says why and what to do. */
export class ClusterMismatchError extends Error {
  override name = "ClusterMismatchError";
}

const META = "cluster-revision";

export class ClusterMemory {
  readonly #store: NodeStateStore;
  #id: string | undefined;
  #revision: number;
  #written: number;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** `id`: the cluster the stored credential belongs to, if known. */
  constructor(store: NodeStateStore, id: string | undefined) {
    this.#store = store;
    this.#id = id === "" ? undefined : id;
    const n = Number(store.meta(META) ?? "0");
    this.#revision = Number.isSafeInteger(n) && n >= 0 ? n : 0;
    this.#written = this.#revision;
  }

  /** The cluster this node belongs to, once known. */
  get id(): string | undefined {
    return this.#id;
  }

  /** The highest revision applied (0 when none is known). */
  get revision(): number {
    return this.#revision;
  }

  /**
   * Accepts the cluster id a manager answered with; the first one known is
   * remembered. Throws ClusterMismatchError for another cluster's.
   */
  accept(id: string, url: string): void {
    if (id === "") return;
    if (this.#id === undefined) {
      this.#id = id;
      return;
    }
    if (id !== this.#id) {
      throw new ClusterMismatchError(
        `Cannot follow the cluster manager at ${url}: it answers for cluster ${id}, but this node belongs to cluster ${this.#id} (was its store replaced or emptied?). Peers, routes and pods stay as they are. Restore the manager's store; or, to move this node to the new cluster, run \`wgcni node leave --force\` and join again`,
      );
    }
  }

  /** Throws ClusterMismatchError when a snapshot at `revision` is behind what this node applied. */
  checkSnapshot(revision: number, url: string): void {
    if (revision >= this.#revision) return;
    throw new ClusterMismatchError(
      `Cannot follow the cluster manager at ${url}: its snapshot is at revision ${revision}, behind revision ${this.#revision} that this node already applied (its store lost committed changes?). Peers, routes and pods stay as they are until it is restored (or started with --restored)`,
    );
  }

  /** Records an applied revision; written to the state store at most every 2 s. */
  applied(revision: number): void {
    if (revision <= this.#revision) return;
    this.#revision = revision;
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, 2000);
    Deno.unrefTimer(this.#timer);
  }

  /** Writes the applied revision now (at shutdown). */
  flush(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#written === this.#revision) return;
    try {
      this.#store.setMeta(META, String(this.#revision));
      this.#written = this.#revision;
    } catch {
      // A full state directory: the next write tries again.
    }
  }
}
