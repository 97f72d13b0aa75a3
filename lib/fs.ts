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

/**
 * True when something is at `path`, a dangling link included (it is not
 * followed); an error other than "not found" (no permission) is thrown.
 */
export function existsSync(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * Writes `text` to `path` atomically with `mode`: a temp file beside it,
 * fsync, rename. Readers see the old file or the new one, never a part; a
 * failure removes the temp file.
 */
export function writeFileAtomicSync(path: string, text: string, mode: number): void {
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    const f = Deno.openSync(tmp, { write: true, create: true, truncate: true, mode });
    try {
      f.writeSync(new TextEncoder().encode(text));
      f.syncSync();
    } finally {
      f.close();
    }
    // The mode given at creation is reduced by the umask; a left-over temp file keeps its own.
    Deno.chmodSync(tmp, mode);
    Deno.renameSync(tmp, path);
  } catch (err) {
    try {
      Deno.removeSync(tmp);
    } catch { /* never made */ }
    throw err;
  }
}

/** {@linkcode writeFileAtomicSync} readable by its owner only (0600): keys, tokens, credentials. */
export function writeSecretFileSync(path: string, text: string): void {
  writeFileAtomicSync(path, text, 0o600);
}

/** {@linkcode writeSecretFileSync} for async callers. */
export function writeSecretFile(path: string, text: string): Promise<void> {
  return Promise.resolve().then(() => writeSecretFileSync(path, text));
}

/** Why a file could not be read, in a few words (for "Cannot read …: WHY"). */
export function readFailure(err: unknown): string {
  return err instanceof Deno.errors.NotFound
    ? "no such file"
    : err instanceof Deno.errors.PermissionDenied
    ? "permission denied"
    : (err as Error).message;
}
