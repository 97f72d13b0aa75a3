/**
 * The node's identity on disk: its WireGuard private key and its cluster
 * credential, each 0600 and written atomically. A key file others can read
 * is refused: the key may already have leaked.
 */
import { writeSecretFile } from "../../lib/fs.ts";
import { generateKeyPair, parseKey, publicKeyOf } from "../../lib/wireguard/mod.ts";

export interface NodeKey {
  readonly privateKey: string;
  readonly publicKey: string;
}

/** What the node keeps of its registration. */
export interface NodeCredential {
  readonly name: string;
  readonly credential: string;
  readonly clusterUrls: readonly string[];
  /** The id of the cluster the credential belongs to (absent in files of older versions). */
  readonly clusterId?: string;
}

const KEY_FILE = "private.key";
/** The next private key while a rotation is under way (see rotation.ts). */
const NEXT_KEY_FILE = "next.key";
const CRED_FILE = "credential.json";

export { writeSecretFile };

async function readSecretFile(path: string): Promise<string | undefined> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0) {
    throw new Error(
      `Cannot use ${path}: it is readable by others (mode ${(info.mode & 0o777).toString(8)}); ` +
        "the key may have leaked — replace it or chmod 600 it if you are sure",
    );
  }
  return await Deno.readTextFile(path);
}

/** Loads the node key from `keyDir`, creating it on first start. */
export async function loadOrCreateKey(keyDir: string): Promise<NodeKey> {
  await Deno.mkdir(keyDir, { recursive: true, mode: 0o700 });
  const path = `${keyDir}/${KEY_FILE}`;
  const text = await readSecretFile(path);
  if (text !== undefined) {
    const privateKey = parseKey(text, `the private key in ${path}`);
    return { privateKey, publicKey: await publicKeyOf(privateKey) };
  }
  const pair = await generateKeyPair();
  await writeSecretFile(path, pair.privateKey + "\n");
  return pair;
}

/** When the node's key was made (its file's time): what `--key-lifetime` counts from. */
export async function keyMadeAt(keyDir: string): Promise<number> {
  const info = await Deno.stat(`${keyDir}/${KEY_FILE}`);
  return info.mtime?.getTime() ?? Date.now();
}

/** Keeps the next private key beside the current one (0600, atomic) before it is announced. */
export async function saveNextKey(keyDir: string, privateKey: string): Promise<void> {
  await writeSecretFile(`${keyDir}/${NEXT_KEY_FILE}`, parseKey(privateKey, "private key") + "\n");
}

/** The next key of a rotation cut short, if its file is there. */
export async function loadNextKey(keyDir: string): Promise<NodeKey | undefined> {
  const path = `${keyDir}/${NEXT_KEY_FILE}`;
  const text = await readSecretFile(path);
  if (text === undefined) return undefined;
  const privateKey = parseKey(text, `the private key in ${path}`);
  return { privateKey, publicKey: await publicKeyOf(privateKey) };
}

/** The next key becomes the node's key: one rename, so the node has one key or the other. */
export async function promoteNextKey(keyDir: string): Promise<void> {
  await Deno.rename(`${keyDir}/${NEXT_KEY_FILE}`, `${keyDir}/${KEY_FILE}`);
  const dir = await Deno.open(keyDir, { read: true });
  try {
    await dir.sync();
  } catch {
    // Not every file system syncs a directory; the rename is done either way.
  } finally {
    dir.close();
  }
}

/** Drops the next key of a rotation that did not happen. */
export async function dropNextKey(keyDir: string): Promise<void> {
  await Deno.remove(`${keyDir}/${NEXT_KEY_FILE}`).catch(() => {});
}

/** The stored credential, if the node registered before. */
export async function loadCredential(keyDir: string): Promise<NodeCredential | undefined> {
  const text = await readSecretFile(`${keyDir}/${CRED_FILE}`);
  if (text === undefined) return undefined;
  const v = JSON.parse(text) as NodeCredential;
  if (typeof v.name !== "string" || typeof v.credential !== "string") {
    throw new TypeError(`Cannot use ${keyDir}/${CRED_FILE}: missing name or credential`);
  }
  return v;
}

export async function saveCredential(keyDir: string, cred: NodeCredential): Promise<void> {
  await writeSecretFile(`${keyDir}/${CRED_FILE}`, JSON.stringify(cred) + "\n");
}

export async function removeCredential(keyDir: string): Promise<void> {
  await Deno.remove(`${keyDir}/${CRED_FILE}`).catch(() => {});
}
