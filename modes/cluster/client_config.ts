/**
 * `wgcni client add`: the key pair is made here, on the machine that will
 * use it; only the public key goes to the cluster manager, which answers with
 * the client's addresses and every node to peer with. The result is a
 * `wg-quick` configuration written with mode 0600 (or printed).
 */
import { existsSync, writeSecretFileSync } from "../../lib/fs.ts";
import type { ClusterClient } from "../../lib/api/cluster_client.ts";
import type { ClientResponse } from "../../lib/api/cluster_types.ts";
import {
  generateKeyPair,
  privateKeyOf,
  publicKeyOf,
  renderWgQuick,
} from "../../lib/wireguard/mod.ts";

/** Keep-alive the client sends so nodes can reach it behind NAT. */
export const CLIENT_KEEPALIVE_SECONDS = 25;

/** The wg-quick configuration of a registered client. */
export function clientConfig(privateKey: string, answer: ClientResponse): string {
  return renderWgQuick({
    privateKey,
    addresses: answer.client.addresses,
    peers: answer.nodes.map((n) => ({
      publicKey: n.publicKey,
      ...(n.endpoint !== undefined ? { endpoint: n.endpoint } : {}),
      allowedIps: n.allowedIps,
      persistentKeepalive: CLIENT_KEEPALIVE_SECONDS,
    })),
  });
}

/**
 * Creates the client's key pair, registers the public key and returns the
 * configuration; with `output`, writes it there (mode 0600, atomically) and
 * refuses to replace an existing file. A client registered but not written
 * is removed again.
 */
export async function addClient(
  api: ClusterClient,
  options: { name: string; output?: string },
): Promise<{ config: string; answer: ClientResponse }> {
  const { name, output } = options;
  let tmp: string | undefined;
  if (output !== undefined) {
    if (existsSync(output)) {
      throw new TypeError(
        `Cannot write ${output}: the file exists (remove it or choose another -o)`,
      );
    }
    // Prove the file can be written before anything is registered.
    tmp = `${output}.check-${Deno.pid}`;
    try {
      Deno.writeTextFileSync(tmp, "", { createNew: true, mode: 0o600 });
    } catch (err) {
      throw new TypeError(`Cannot write ${output}: ${(err as Error).message}`);
    }
  }
  try {
    const keys = await generateKeyPair();
    const answer = await api.addClient({ name, publicKey: keys.publicKey });
    let config: string;
    try {
      config = clientConfig(keys.privateKey, answer);
    } catch (err) {
      await api.removeClient(name).catch(() => {});
      throw new TypeError(
        `Cannot write the configuration of client ${name}: ${
          (err as Error).message
        } (client ${name} was removed again)`,
      );
    }
    if (output !== undefined && tmp !== undefined) {
      try {
        writeSecretFileSync(output, config);
        Deno.removeSync(tmp);
        tmp = undefined;
      } catch (err) {
        await api.removeClient(name).catch(() => {});
        throw new TypeError(
          `Cannot write ${output}: ${(err as Error).message} (client ${name} was removed again)`,
        );
      }
    }
    return { config, answer };
  } finally {
    if (tmp !== undefined) {
      try {
        Deno.removeSync(tmp);
      } catch {
        // nothing to clean up
      }
    }
  }
}

/**
 * Rewrites a client's configuration with every node as of now (nodes that
 * joined since it was written, endpoints that changed), keeping the private
 * key that is in the file: it never leaves this machine. The file must hold
 * the key the cluster registered for that client. Written atomically, 0600.
 */
export async function refreshClient(
  api: ClusterClient,
  options: { name: string; file: string },
): Promise<ClientResponse> {
  const { name, file } = options;
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (err) {
    throw new TypeError(`Cannot read ${file}: ${(err as Error).message}`);
  }
  const privateKey = privateKeyOf(text);
  const answer = await api.client(name);
  if (await publicKeyOf(privateKey) !== answer.client.publicKey) {
    throw new TypeError(
      `Cannot refresh ${file}: it holds the key of another client than ${name} (the cluster has ${answer.client.publicKey})`,
    );
  }
  try {
    writeSecretFileSync(file, clientConfig(privateKey, answer));
  } catch (err) {
    throw new TypeError(`Cannot write ${file}: ${(err as Error).message}`);
  }
  return answer;
}
