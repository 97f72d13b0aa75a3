/**
 * From `--store etcd://…` and the `--etcd-*` flags to an etcd connection:
 * endpoints, prefix, TLS material (read from files here) and password auth.
 */
import { type EtcdConnection, parseEtcdUrl } from "../../lib/store/cluster_etcd.ts";

/** The `--etcd-*` flags as parsed. */
export interface EtcdFlags {
  readonly etcdPrefix?: string;
  readonly etcdCa?: string;
  readonly etcdCert?: string;
  readonly etcdKey?: string;
  readonly etcdUser?: string;
  readonly etcdPassword?: string;
}

function readPem(path: string, flag: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (err) {
    throw new TypeError(`Cannot read ${flag} ${path}: ${(err as Error).message}`);
  }
}

/** The connection `store` and the flags describe; throws RangeError/TypeError saying what is wrong. */
export function etcdConnection(store: string, flags: EtcdFlags): EtcdConnection {
  const { endpoints, tls } = parseEtcdUrl(store);
  if ((flags.etcdCert === undefined) !== (flags.etcdKey === undefined)) {
    throw new TypeError(
      "Cannot use an etcd client certificate: give both --etcd-cert and --etcd-key",
    );
  }
  if (flags.etcdCa !== undefined && !tls) {
    throw new TypeError(
      `Cannot use --etcd-ca with ${store}: TLS to etcd is etcds://HOST:PORT[,HOST:PORT...]`,
    );
  }
  if (tls && flags.etcdCa === undefined) {
    throw new TypeError(`Cannot use ${store}: give the CA of the etcd members with --etcd-ca`);
  }
  if (flags.etcdPassword !== undefined && flags.etcdUser === undefined) {
    throw new TypeError("Cannot use --etcd-password without --etcd-user");
  }
  const prefix = flags.etcdPrefix ?? "/wgcni/";
  if (!prefix.startsWith("/") || /\s/.test(prefix)) {
    throw new RangeError(
      `Cannot use --etcd-prefix "${prefix}": it must start with / and hold no spaces`,
    );
  }
  return {
    endpoints,
    prefix,
    ...(flags.etcdCa !== undefined ? { caCert: readPem(flags.etcdCa, "--etcd-ca") } : {}),
    ...(flags.etcdCert !== undefined ? { clientCert: readPem(flags.etcdCert, "--etcd-cert") } : {}),
    ...(flags.etcdKey !== undefined ? { clientKey: readPem(flags.etcdKey, "--etcd-key") } : {}),
    ...(flags.etcdUser !== undefined ? { username: flags.etcdUser } : {}),
    ...(flags.etcdPassword !== undefined ? { password: flags.etcdPassword } : {}),
  };
}
