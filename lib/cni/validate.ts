/**
 * The rules for the names a runtime passes (CNI_CONTAINERID, CNI_IFNAME,
 * CNI_NETNS), shared by the plugin and the node's local API so both refuse
 * the same values. Dependency-free: the plugin path imports it.
 */

/** Longest container id accepted (the spec sets none; real runtimes use 64 hex digits). */
export const MAX_CONTAINER_ID = 256;

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const enc = new TextEncoder();

/** Why `id` is not a valid container id, or undefined when it is. */
export function containerIdProblem(id: string): string | undefined {
  if (id === "") return "it is empty";
  if (enc.encode(id).length > MAX_CONTAINER_ID) return `longer than ${MAX_CONTAINER_ID} bytes`;
  if (!CONTAINER_ID.test(id)) {
    return "expected letters, digits, _ . - (a letter or digit first)";
  }
  return undefined;
}

/** Why `name` is not a valid interface name, or undefined when it is. */
export function ifnameProblem(name: string): string | undefined {
  const bytes = enc.encode(name).length;
  if (bytes < 1 || bytes > 15 || name === "." || name === ".." || /[/:\s]/.test(name)) {
    return "1-15 bytes, not . or .., without / : or whitespace";
  }
  return undefined;
}

/** Why `path` cannot name a network namespace (for ADD and CHECK), or undefined. */
export function netnsPathProblem(path: string): string | undefined {
  if (!path.startsWith("/")) return "expected an absolute path";
  if (enc.encode(path).length > 4096) return "longer than 4096 bytes";
  return undefined;
}

/** A value for an error message: quoted, and cut when long. */
export function quoteValue(value: string): string {
  return JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}…` : value);
}
