/**
 * Telling whether a path names a network namespace, and which one, before
 * anything is done in it: a runtime's CNI_NETNS may be a stale path, a
 * regular file, another kind of namespace or the node's own namespace, and
 * each of those must be refused before an address is allocated.
 *
 * Without starting a process in the common cases: a namespace file is on
 * nsfs (the device of /proc/self/ns/net) and its inode is the namespace's;
 * its kind is in the name of a /proc/PID/ns link, or in the root field of
 * the nsfs bind mount (`ip netns add`, runtimes) in /proc/self/mountinfo.
 * Only a path that neither tells (a bind mount in another mount namespace)
 * costs one `nsenter --net=PATH true`.
 */
import type { Runner } from "./runner.ts";

/** What a path names. */
export type NetnsVerdict =
  | { readonly ok: true; readonly inode: number }
  | { readonly ok: false; readonly missing: boolean; readonly why: string };

/** Reads the files the verdict needs (real ones by default; tests may point elsewhere). */
export interface NetnsFiles {
  stat(path: string): Promise<Deno.FileInfo>;
  readLink(path: string): Promise<string>;
  readText(path: string): Promise<string>;
}

const REAL_FILES: NetnsFiles = {
  stat: (p) => Deno.stat(p),
  readLink: (p) => Deno.readLink(p),
  readText: (p) => Deno.readTextFile(p),
};

const NS_LINK = /^([a-z_]+):\[(\d+)\]$/;

function describe(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a directory";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isFifo) return "a named pipe";
  if (info.isSocket) return "a socket";
  return "not a namespace file";
}

/** Judges CNI_NETNS paths against this process's own network namespace. */
export class NetnsInspector {
  readonly #runner: Runner;
  readonly #files: NetnsFiles;
  #own: Promise<Deno.FileInfo> | undefined;

  constructor(runner: Runner, options: { files?: NetnsFiles } = {}) {
    this.#runner = runner;
    this.#files = options.files ?? REAL_FILES;
  }

  /** The node's own namespace file (this process's), read once. */
  #ownInfo(): Promise<Deno.FileInfo> {
    this.#own ??= this.#files.stat("/proc/self/ns/net");
    return this.#own;
  }

  /** Whether `path` is a network namespace other than this process's own, and if not, why. */
  async inspect(path: string): Promise<NetnsVerdict> {
    let info: Deno.FileInfo;
    try {
      info = await this.#files.stat(path);
    } catch (err) {
      const missing = err instanceof Deno.errors.NotFound;
      return {
        ok: false,
        missing,
        why: missing ? "does not exist" : `cannot be read: ${(err as Error).message}`,
      };
    }
    const own = await this.#ownInfo();
    if (info.dev !== own.dev || info.ino === null) {
      return { ok: false, missing: false, why: `is ${describe(info)}, not a network namespace` };
    }
    if (info.ino === own.ino) {
      return { ok: false, missing: false, why: "is the node's own network namespace" };
    }
    const kind = await this.#kind(path, info.ino);
    if (kind !== "net") {
      return {
        ok: false,
        missing: false,
        why: kind === undefined
          ? "is not a network namespace"
          : `is a ${kind} namespace, not a network namespace`,
      };
    }
    return { ok: true, inode: info.ino };
  }

  /** The kind of the namespace with inode `ino` that `path` names (net, mnt, uts, …). */
  async #kind(path: string, ino: number): Promise<string | undefined> {
    // A bind mount of a namespace (what runtimes pass) has "KIND:[INODE]"
    // as its root, the 4th field of its mountinfo line.
    const mounts = await this.#files.readText("/proc/self/mountinfo").catch(() => "");
    const at = mounts.indexOf(`:[${ino}] `);
    if (at >= 0) {
      const start = mounts.lastIndexOf(" ", at) + 1;
      return mounts.slice(start, at);
    }
    // A /proc/PID/ns/KIND link reads as "KIND:[INODE]".
    const link = await this.#files.readLink(path).catch(() => undefined);
    const m = link?.match(NS_LINK);
    if (m && Number(m[2]) === ino) return m[1];
    // Neither tells (a mount of another mount namespace): setns() decides.
    const r = await this.#runner.exec(["nsenter", `--net=${path}`, "--", "true"]);
    return r.code === 0 ? "net" : undefined;
  }
}
