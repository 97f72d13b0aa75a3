/**
 * The two tokens a cluster starts with: the admin token and a join token
 * without expiry. Given by flag, they replace what the store had; not given,
 * they are generated on the first start only, stored hashed, and written
 * (mode 0600) into the data directory for the operator; never printed.
 */
import { join } from "node:path";
import type { ClusterStore } from "../../lib/store/cluster_store.ts";
import { newSecret } from "../../lib/store/cluster_store.ts";
import { DATA_FILES, writeSecretFile } from "./state.ts";

/** The id the bootstrap join token is listed (and revoked) under. */
export const BOOTSTRAP_JOIN_ID = "join";
const ADMIN_ID = "admin";

/** Shortest token accepted from a flag: a guessable token would open the cluster. */
export const MIN_TOKEN_LENGTH = 16;

function checkGiven(flag: string, token: string | undefined): void {
  if (token === undefined) return;
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
    throw new RangeError(
      `Cannot use ${flag}: a token needs at least ${MIN_TOKEN_LENGTH} characters and no spaces`,
    );
  }
}

/**
 * Puts the bootstrap tokens in place and returns lines to show the operator
 * (empty unless a token was generated now).
 */
export async function bootstrapTokens(
  store: ClusterStore,
  options: { dataDir: string; joinToken?: string; adminToken?: string; now: number },
): Promise<string[]> {
  checkGiven("--join-token", options.joinToken);
  checkGiven("--admin-token", options.adminToken);
  if (options.joinToken !== undefined && options.joinToken === options.adminToken) {
    throw new RangeError("Cannot use the same value for --join-token and --admin-token");
  }
  const lines: string[] = [];
  // Of several replicas starting at once, one generates the tokens.
  const first = store.getFlag("bootstrapped") === undefined &&
    await store.initFlag("bootstrapped", String(options.now));
  const place = async (
    id: string,
    kind: "admin" | "join",
    given: string | undefined,
    file: string,
    label: string,
  ) => {
    const path = join(options.dataDir, file);
    if (given !== undefined) {
      const known = store.findToken(given);
      if (known?.id !== id) await store.putToken({ id, kind, secret: given, now: options.now });
      // A generated copy left from an earlier start no longer works: remove it.
      try {
        if (Deno.readTextFileSync(path).trim() !== given) Deno.removeSync(path);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
      return;
    }
    if (!first) return;
    const secret = newSecret();
    await store.putToken({ id, kind, secret, now: options.now });
    writeSecretFile(path, secret + "\n");
    // Only the path is shown: under a service manager stdout lands in a journal.
    lines.push(`generated the ${label} into ${path} (mode 0600)`);
  };
  await place(ADMIN_ID, "admin", options.adminToken, DATA_FILES.adminToken, "admin token");
  await place(BOOTSTRAP_JOIN_ID, "join", options.joinToken, DATA_FILES.joinToken, "join token");
  return lines;
}
