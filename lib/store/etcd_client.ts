/**
 * How to reach etcd: endpoints from an `etcd://` URL, TLS and password
 * settings, and a client made from them. The etcd engine and
 * `wgcni cluster migrate` connect through here.
 */
import { Buffer } from "node:buffer";
import { Etcd3, type IOptions } from "etcd3";

/** Where and how to reach etcd. */
export interface EtcdConnection {
  /** `http://HOST:PORT` or `https://HOST:PORT`, one per member. */
  readonly endpoints: readonly string[];
  /** Every key lives under this prefix (default `/wgcni/`). */
  readonly prefix?: string;
  /** PEM text: the CA that signed the members' certificates (turns on TLS). */
  readonly caCert?: string;
  /** PEM text of a client certificate and its key, for members that ask for one. */
  readonly clientCert?: string;
  readonly clientKey?: string;
  readonly username?: string;
  readonly password?: string;
  /** Time limit of one etcd request (default 5 s). */
  readonly requestTimeoutMs?: number;
}

/**
 * Reads `etcd://HOST:PORT[,HOST:PORT...]` (or `etcds://` for TLS). Throws
 * RangeError naming what is wrong.
 */
export function parseEtcdUrl(text: string): { endpoints: string[]; tls: boolean } {
  const m = /^(etcds?):\/\/(.+)$/.exec(text);
  if (m === null) {
    throw new RangeError(
      `Cannot use --store ${text}: expected etcd://HOST:PORT[,HOST:PORT...] (or etcds:// for TLS)`,
    );
  }
  const tls = m[1] === "etcds";
  const endpoints = m[2]!.replace(/\/+$/, "").split(",").map((hp) => {
    const ok = /^\[[0-9a-fA-F:.]+\]:\d{1,5}$/.test(hp) || /^[A-Za-z0-9.-]+:\d{1,5}$/.test(hp);
    if (!ok || Number(hp.slice(hp.lastIndexOf(":") + 1)) > 65535) {
      throw new RangeError(`Cannot use --store ${text}: "${hp}" is not HOST:PORT`);
    }
    return `${tls ? "https" : "http"}://${hp}`;
  });
  return { endpoints, tls };
}

/** The key prefix with its trailing slash (default `/wgcni/`). */
export function normalizePrefix(prefix: string | undefined): string {
  const p = prefix ?? "/wgcni/";
  return p.endsWith("/") ? p : p + "/";
}

/** An etcd client for `conn` (does not contact etcd yet). */
export function connect(conn: EtcdConnection): Etcd3 {
  const timeout = conn.requestTimeoutMs ?? 5000;
  const enc = (s: string) => Buffer.from(s, "utf8");
  const options: IOptions = {
    hosts: [...conn.endpoints],
    dialTimeout: timeout,
    defaultCallOptions: (ctx) => ctx.isStream ? {} : { deadline: Date.now() + timeout },
    ...(conn.caCert !== undefined
      ? {
        credentials: {
          rootCertificate: enc(conn.caCert),
          ...(conn.clientKey !== undefined ? { privateKey: enc(conn.clientKey) } : {}),
          ...(conn.clientCert !== undefined ? { certChain: enc(conn.clientCert) } : {}),
        },
      }
      : {}),
    ...(conn.username !== undefined
      ? { auth: { username: conn.username, password: conn.password ?? "" } }
      : {}),
  };
  return new Etcd3(options);
}
