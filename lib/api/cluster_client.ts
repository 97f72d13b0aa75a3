/**
 * The typed client of the cluster API, used by every caller (node manager,
 * CLI, tests). Requests are built by Hono's `hc` from the app's type, so a
 * route or body that does not exist does not compile. Failures come back as
 * wgcni's named errors (see errors.ts): AuthError, ConflictError,
 * NotFoundError, PoolExhaustedError, UnavailableError (also for a manager that
 * cannot be reached), TypeError/RangeError for refused input.
 */
import { hc } from "hono/client";
import { TransportError, UnavailableError } from "../errors.ts";
import type { ClusterApp } from "./cluster_app.ts";
import type {
  ClientInfo,
  ClientResponse,
  NextKey,
  NodeInfo,
  NodeReport,
  PeerSnapshot,
  RegisterRequest,
  RegisterResponse,
  TokenCreated,
  TokenInfo,
  WatchEvent,
} from "./cluster_types.ts";
import { CLUSTER_HEADER } from "./cluster_types.ts";
import { type ErrorBody, errorFromResponse } from "./errors.ts";

/** How to reach and authenticate to the cluster manager. */
export interface ClusterClientOptions {
  /** Bearer credential: join token, node credential or admin token. */
  readonly token: string;
  /** PEM of the CA (or self-signed certificate) that signed the server's certificate. */
  readonly caCert?: string;
  /** Time limit of each request but watch (default 30 s). */
  readonly timeoutMs?: number;
  /** Replaces the network, e.g. `(req, init) => app.request(req, init)` in tests. */
  readonly fetch?: (input: Request | string | URL, init?: RequestInit) => Promise<Response>;
}

/** Options of {@linkcode ClusterClient.watch}. */
export interface WatchOptions {
  /** Called for each keep-alive with the server's current revision. */
  readonly onPing?: (revision: number) => void;
  /** Called once the manager accepted the stream (before any event: a resume may have none yet). */
  readonly onOpen?: () => void;
}

type Api = ReturnType<typeof hc<ClusterApp>>;

async function failure(res: { status: number; json(): Promise<unknown> }): Promise<Error> {
  let body: Partial<ErrorBody> | undefined;
  try {
    body = await res.json() as Partial<ErrorBody>;
  } catch {
    body = undefined;
  }
  return errorFromResponse(res.status, body);
}

type Answer = { ok: boolean; status: number; json(): Promise<unknown> };

/** Waits for an answer and throws the error a non-2xx one describes. */
async function answered<A extends Answer>(answer: Promise<A>): Promise<A> {
  const res = await answer;
  if (!res.ok) throw await failure(res);
  return res;
}

/** The JSON body of a 2xx answer, or the error a non-2xx answer describes. */
async function bodyOf<T>(answer: Promise<Answer>): Promise<T> {
  return await (await answered(answer)).json() as T;
}

/** What a certificate problem means, in the words an operator acts on. */
const CERTIFICATE_PROBLEMS: readonly [RegExp, string][] = [
  [/UnknownIssuer/, "it is signed by a CA this node does not trust (give that CA with --ca)"],
  [/NotValidForName|NotValidForContext/, "it was issued for another name than the one in the URL"],
  [/Expired/, "it has expired"],
  [/NotValidYet/, "it is not valid yet (is a clock wrong?)"],
  [
    /CaUsedAsEndEntity/,
    "the manager presents a CA certificate as its own (serve one signed by it)",
  ],
  [/BadSignature|BadEncoding/, "it is damaged"],
];

/**
 * The error for a request that never got an answer: a TransportError (a
 * mistake in the set-up, permanent) for certificate and protocol mismatches,
 * else an UnavailableError (worth retrying). Both name the cause.
 */
export function connectFailure(baseUrl: string, err: unknown): Error {
  const cause = String((err as { cause?: unknown }).cause ?? (err as Error).message ?? err);
  const at = `Cannot reach the cluster manager at ${baseUrl}`;
  const cert = cause.match(/invalid peer certificate: (.*)$/m)?.[1];
  if (cert !== undefined) {
    const meaning = CERTIFICATE_PROBLEMS.find(([re]) => re.test(cert))?.[1] ??
      "it is not accepted";
    return new TransportError(`${at}: its TLS certificate is refused: ${meaning} (${cert.trim()})`);
  }
  if (/invalid HTTP version parsed|InvalidContentType|wrong version number/.test(cause)) {
    const tlsThere = baseUrl.startsWith("http:");
    return new TransportError(
      `${at}: ${
        tlsThere
          ? "it answers in TLS there; use https:// (with --ca)"
          : "it does not speak TLS there; use the manager's TLS address, or http:// with --insecure"
      }`,
    );
  }
  const reason = cause.match(/(?:client error \([^)]*\): )?([^:]*(?:\(os error \d+\))?)$/)?.[1]
    ?.trim();
  return new UnavailableError(`${at}: ${reason || (err as Error).message}`);
}

/** True for `localhost`, 127.0.0.0/8 and ::1 (a URL's hostname, IPv6 in brackets). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return h === "localhost" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::1";
}

/**
 * Refuses to send a credential over plain HTTP to a manager that is not on
 * loopback, unless the operator allowed it (`--insecure`): anyone on the path
 * could read the token. TypeError naming the URL and the way out.
 */
export function checkTransport(url: string, options: { insecure: boolean; flag: string }): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new TypeError(
      `Cannot use ${options.flag} ${url}: not a URL (expected https://HOST:PORT, or http:// on loopback)`,
    );
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new TypeError(`Cannot use ${options.flag} ${url}: expected https:// or http://`);
  }
  if (u.protocol === "http:" && !isLoopbackHost(u.hostname) && !options.insecure) {
    throw new TypeError(
      `Cannot send a token to ${url} over plain HTTP: it is not a loopback address, so anyone on the path could read it; use https:// (with --ca), or give --insecure to allow it`,
    );
  }
}

/** A client of one cluster manager with one credential. */
export class ClusterClient {
  readonly #baseUrl: string;
  readonly #options: ClusterClientOptions;
  readonly #api: Api;
  readonly #httpClient: Deno.HttpClient | undefined;
  readonly #timeoutMs: number;

  constructor(baseUrl: string, options: ClusterClientOptions) {
    this.#baseUrl = baseUrl.replace(/\/+$/, "");
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#httpClient = options.caCert !== undefined
      ? Deno.createHttpClient({ caCerts: [options.caCert] })
      : undefined;
    const httpClient = this.#httpClient;
    const base = options.fetch ?? fetch;
    const send = async (input: Request | string | URL, init?: RequestInit): Promise<Response> => {
      try {
        return await (httpClient === undefined
          ? base(input, init)
          : fetch(input, { ...init, client: httpClient } as RequestInit));
      } catch (err) {
        if (err instanceof DOMException && (err.name === "AbortError")) throw err;
        if (err instanceof DOMException && err.name === "TimeoutError") {
          throw new UnavailableError(
            `Cannot reach the cluster manager at ${this.#baseUrl}: no answer within ${this.#timeoutMs} ms`,
          );
        }
        throw connectFailure(this.#baseUrl, err);
      }
    };
    this.#api = hc<ClusterApp>(this.#baseUrl, {
      fetch: send,
      headers: { authorization: `Bearer ${options.token}` },
    });
  }

  /** The manager's URL, without a trailing slash. */
  get baseUrl(): string {
    return this.#baseUrl;
  }

  /** The same manager with another credential (e.g. the node credential after registering). */
  withToken(token: string): ClusterClient {
    return new ClusterClient(this.#baseUrl, { ...this.#options, token });
  }

  #init(): { init: RequestInit } {
    return { init: { signal: AbortSignal.timeout(this.#timeoutMs) } };
  }

  /** Registers this node (or registers it again): its subnets and a node credential. */
  async register(req: RegisterRequest): Promise<RegisterResponse> {
    return await bodyOf<RegisterResponse>(this.#api.v1.nodes.$post({ json: req }, this.#init()));
  }

  /** One node (that node's credential or admin). */
  async getNode(name: string): Promise<NodeInfo> {
    return (await bodyOf<{ node: NodeInfo }>(
      this.#api.v1.nodes[":name"].$get({ param: { name } }, this.#init()),
    )).node;
  }

  /** Every node (admin). */
  async nodes(): Promise<readonly NodeInfo[]> {
    return (await bodyOf<{ nodes: NodeInfo[] }>(this.#api.v1.nodes.$get({}, this.#init()))).nodes;
  }

  /** Announces this node's next key and when every node switches to it. */
  async announceKey(name: string, next: NextKey): Promise<NodeInfo> {
    return (await bodyOf<{ node: NodeInfo }>(
      this.#api.v1.nodes[":name"].key.$post({ param: { name }, json: next }, this.#init()),
    )).node;
  }

  /** Tells the manager where a NAT'd node's handshakes came from, as this node's interface saw. */
  async observeEndpoint(name: string, endpoint: string): Promise<NodeInfo> {
    return (await bodyOf<{ node: NodeInfo }>(
      this.#api.v1.nodes[":name"].endpoint.$post(
        { param: { name }, json: { endpoint } },
        this.#init(),
      ),
    )).node;
  }

  /** The relay endpoint this node sends to for its pair with `peer` (made on first ask). */
  async relay(peer: string): Promise<string> {
    return (await bodyOf<{ endpoint: string }>(
      this.#api.v1.relay.$post({ json: { peer } }, this.#init()),
    )).endpoint;
  }

  /** Renews the node's lease, with what it reports of itself when given. */
  async heartbeat(name: string, report?: NodeReport): Promise<NodeInfo> {
    const { init } = this.#init();
    return (await bodyOf<{ node: NodeInfo }>(this.#api.v1.nodes[":name"].heartbeat.$post(
      { param: { name } },
      report === undefined ? { init } : {
        init: { ...init, body: JSON.stringify(report) },
        // Added to the client's own headers (its credential), not in place of them.
        headers: { "content-type": "application/json" },
      },
    ))).node;
  }

  /** Deregisters a node (its own credential, or admin); its subnets are reused after the grace period. */
  async leave(name: string): Promise<void> {
    await answered(this.#api.v1.nodes[":name"].$delete({ param: { name } }, this.#init()));
  }

  /**
   * Revokes a node's credential (admin) so that it may register again with a
   * join token, keeping its subnets: the recovery for a node that lost its credential.
   */
  async resetNode(name: string): Promise<NodeInfo> {
    return (await bodyOf<{ node: NodeInfo }>(
      this.#api.v1.nodes[":name"].reset.$post({ param: { name } }, this.#init()),
    )).node;
  }

  /** Same as {@linkcode leave}, named for the admin's use. */
  removeNode(name: string): Promise<void> {
    return this.leave(name);
  }

  /** Every peer (nodes and clients, the caller included) at the current revision. */
  async peers(): Promise<PeerSnapshot> {
    return await bodyOf<PeerSnapshot>(this.#api.v1.peers.$get({}, this.#init()));
  }

  /**
   * Watches the peer list: a snapshot (or, with `since`, the changes after that
   * revision when the manager still has them), then one event per change. The
   * iterator ends when the server closes the stream and throws when the
   * connection fails; reconnecting with the last revision is the caller's job.
   */
  async *watch(
    since?: number,
    signal?: AbortSignal,
    options: WatchOptions = {},
  ): AsyncGenerator<WatchEvent, void, undefined> {
    const query = since === undefined ? {} : { since: String(since) };
    const res = await answered(this.#api.v1.watch.$get(
      { query },
      { init: signal === undefined ? {} : { signal } },
    ));
    if (res.body === null) return;
    options.onOpen?.();
    const reader = bodyReader(res.body);
    const decoder = new TextDecoder();
    // Aborting ends a pending read too (not every fetch implementation ties the body to the signal).
    const onAbort = () => reader.cancel().catch(() => {});
    signal?.addEventListener("abort", onAbort, { once: true });
    let buf = "";
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done || value === undefined) return;
        // Only the new text (and the two characters before it) can hold a new frame end.
        let from = Math.max(0, buf.length - 2);
        buf += decoder.decode(value, { stream: true });
        // Frames are cut off `buf` once a chunk, not once a frame: a chunk may hold hundreds.
        let at = 0;
        let cut: { end: number; next: number } | undefined;
        while ((cut = frameEnd(buf, from)) !== undefined) {
          const frame = buf.slice(at, cut.end);
          at = from = cut.next;
          const parsed = parseFrame(frame);
          if (parsed === undefined) continue;
          if (parsed.event === "ping") {
            const rev = (JSON.parse(parsed.data) as { revision?: unknown }).revision;
            if (typeof rev === "number") options.onPing?.(rev);
          } else if (parsed.event === "snapshot" || parsed.event === "delta") {
            yield JSON.parse(parsed.data) as WatchEvent;
          } else if (parsed.event === "error") {
            throw new UnavailableError(`The watch stream failed: ${parsed.data}`);
          }
        }
        if (at > 0) buf = buf.slice(at);
      }
    } catch (err) {
      if (err instanceof DOMException && err.name === "AbortError") return;
      if (signal?.aborted) return;
      if (err instanceof UnavailableError || err instanceof SyntaxError) throw err;
      throw new UnavailableError(
        `The watch stream of ${this.#baseUrl} broke: ${(err as Error).message}`,
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
      reader.cancel().catch(() => {});
    }
  }

  /** Registers an external client's public key; its addresses and every node to peer with (admin). */
  async addClient(req: { name: string; publicKey: string }): Promise<ClientResponse> {
    return await bodyOf<ClientResponse>(this.#api.v1.clients.$post({ json: req }, this.#init()));
  }

  /** One external client with every node as of now (admin): what its configuration needs. */
  async client(name: string): Promise<ClientResponse> {
    return await bodyOf<ClientResponse>(
      this.#api.v1.clients[":name"].$get({ param: { name } }, this.#init()),
    );
  }

  /** Every external client (admin). */
  async clients(): Promise<readonly ClientInfo[]> {
    return (await bodyOf<{ clients: ClientInfo[] }>(this.#api.v1.clients.$get({}, this.#init())))
      .clients;
  }

  /** Removes an external client (admin). */
  async removeClient(name: string): Promise<void> {
    await answered(this.#api.v1.clients[":name"].$delete({ param: { name } }, this.#init()));
  }

  /** Creates a join token (admin); the plain token is in the answer only. */
  async createToken(
    options: { ttlSeconds?: number; singleUse?: boolean } = {},
  ): Promise<TokenCreated> {
    return await bodyOf<TokenCreated>(this.#api.v1.tokens.$post({ json: options }, this.#init()));
  }

  /** Join tokens (admin). */
  async tokens(): Promise<readonly TokenInfo[]> {
    return (await bodyOf<{ tokens: TokenInfo[] }>(this.#api.v1.tokens.$get({}, this.#init())))
      .tokens;
  }

  /** Revokes a join token (admin). */
  async revokeToken(id: string): Promise<void> {
    await answered(this.#api.v1.tokens[":id"].$delete({ param: { id } }, this.#init()));
  }

  /**
   * The id of the cluster this manager answers for (every answer carries it
   * in a `wgcni-cluster` header; /healthz needs no credential); "" from a
   * manager that does not say. Throws UnavailableError when it cannot be reached.
   */
  async clusterId(): Promise<string> {
    const res = await this.#api.healthz.$get({}, this.#init());
    await res.body?.cancel();
    return res.headers.get(CLUSTER_HEADER) ?? "";
  }

  /** True when /readyz answers 200 (the store is readable). */
  async ready(): Promise<boolean> {
    try {
      const res = await this.#api.readyz.$get({}, this.#init());
      await res.body?.cancel();
      return res.ok;
    } catch {
      return false;
    }
  }

  /** The Prometheus text of /metrics. */
  async metrics(): Promise<string> {
    return await (await answered(this.#api.metrics.$get({}, this.#init()))).text();
  }

  /** Releases the TLS client, if one was made for `caCert`. */
  close(): void {
    this.#httpClient?.close();
  }

  /** {@linkcode close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The first blank line at or after `from` (`\n\n` or `\r\n\r\n`): where
 * the frame before it ends and where the next frame begins; undefined when
 * `buf` holds no frame end yet. One pass over the text.
 */
function frameEnd(buf: string, from: number): { end: number; next: number } | undefined {
  for (let i = buf.indexOf("\n", from); i >= 0; i = buf.indexOf("\n", i + 1)) {
    const after = buf.charCodeAt(i + 1);
    const blank = after === 10 ? 2 : after === 13 && buf.charCodeAt(i + 2) === 10 ? 3 : 0;
    if (blank === 0) continue;
    return { end: buf.charCodeAt(i - 1) === 13 ? i - 1 : i, next: i + blank };
  }
  return undefined;
}

/** Bytes a watch stream reads at most at a time (one buffer per stream, reused: a snapshot of a thousand nodes in a few reads). */
const WATCH_READ_BYTES = 64 * 1024;

/**
 * A reader of a watch body that reuses one buffer for every read where the
 * body allows it (a byte stream, as fetch's is): a default reader of fetch's
 * body allocates 64 KiB a read, which with thousands of streams and a small
 * delta each is mostly garbage to collect.
 */
function bodyReader(body: ReadableStream<Uint8Array>): {
  read(): Promise<{ value?: Uint8Array | undefined; done: boolean }>;
  cancel(): Promise<void>;
} {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    return body.getReader();
  }
  let buf: ArrayBuffer = new ArrayBuffer(WATCH_READ_BYTES);
  return {
    read: async () => {
      const r = await byob.read(new Uint8Array(buf));
      // The buffer came back (moved) with the bytes: the next read fills it again.
      if (r.value !== undefined) buf = r.value.buffer as ArrayBuffer;
      return r;
    },
    cancel: () => byob.cancel(),
  };
}

/** The `event` and joined `data` fields of one SSE frame (comments and ids skipped). */
function parseFrame(frame: string): { event: string; data: string } | undefined {
  let event = "message";
  let data: string | undefined;
  // Line by line without a split or a copy of the value: a snapshot's data line is its whole size.
  for (let at = 0; at < frame.length;) {
    const nl = frame.indexOf("\n", at);
    const end = nl < 0 ? frame.length : nl;
    const lineEnd = end > at && frame.charCodeAt(end - 1) === 13 ? end - 1 : end;
    const from = at;
    at = end + 1;
    if (lineEnd === from || frame.charCodeAt(from) === 58) continue; // empty, or a ":" comment
    const colon = frame.indexOf(":", from);
    const hasValue = colon >= 0 && colon < lineEnd;
    const field = frame.slice(from, hasValue ? colon : lineEnd);
    const start = !hasValue ? lineEnd : frame.charCodeAt(colon + 1) === 32 ? colon + 2 : colon + 1;
    if (field === "event") event = frame.slice(start, lineEnd);
    else if (field === "data") {
      const value = frame.slice(start, lineEnd);
      data = data === undefined ? value : `${data}\n${value}`;
    }
  }
  if (data === undefined) return undefined;
  return { event, data };
}

/** A client of the cluster manager at `baseUrl` with one credential. */
export function createClusterClient(baseUrl: string, options: ClusterClientOptions): ClusterClient {
  return new ClusterClient(baseUrl, options);
}
