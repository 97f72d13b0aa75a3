/**
 * Shared pieces of the admin commands (`wgcni cluster token|node …`,
 * `wgcni client …`): a typed API client from `--cluster`, `--token`, `--ca`,
 * and plain-text tables.
 */
import { checkTransport, ClusterClient } from "../../lib/api/cluster_client.ts";
import { secretFrom } from "../../lib/secrets.ts";
import { table } from "../../lib/table.ts";

export { table };

/**
 * The flags every admin command takes (also WGCNI_CLUSTER, WGCNI_ADMIN_TOKEN,
 * WGCNI_ADMIN_TOKEN_FILE, WGCNI_CA).
 */
export interface ApiFlags {
  readonly cluster: string;
  readonly token?: string | undefined;
  readonly tokenFile?: string | undefined;
  readonly ca?: string | undefined;
  /** Allows plain HTTP to a manager that is not on loopback. */
  readonly insecure?: boolean | undefined;
}

/** A client of the cluster API with the admin token; TypeError when a flag is missing or bad. */
export async function adminClient(flags: ApiFlags): Promise<ClusterClient> {
  const token = secretFrom("--token", flags.token, flags.tokenFile);
  if (token === undefined || token === "") {
    throw new TypeError(
      "Cannot reach the cluster API without the admin token: give --token-file (or --token), or set WGCNI_ADMIN_TOKEN_FILE",
    );
  }
  checkTransport(flags.cluster, { insecure: flags.insecure === true, flag: "--cluster" });
  let caCert: string | undefined;
  if (flags.ca !== undefined) {
    try {
      caCert = await Deno.readTextFile(flags.ca);
    } catch (err) {
      throw new TypeError(`Cannot read --ca ${flags.ca}: ${(err as Error).message}`);
    }
  }
  return new ClusterClient(flags.cluster, {
    token,
    ...(caCert !== undefined ? { caCert } : {}),
  });
}

/** A timestamp for tables: ISO 8601 to the second, UTC. */
export function when(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}
