/** Small file-system questions asked in several places. */

/** True when something exists at `path` (a file, a directory, a namespace file); false for "". */
export async function pathExists(path: string): Promise<boolean> {
  if (path === "") return false;
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
