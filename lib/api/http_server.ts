/**
 * The cluster manager's HTTP/1.1 server. It bounds what one client can hold
 * on to: connections in total and per source address, the time to send a
 * request head and its body, idle time between requests, the size of a
 * request line (414), a head (431) and a body (413, refused before it is
 * read), and writes a client does not take (a watch stream that stops
 * reading). Running out of file descriptors pauses accepting for a moment;
 * it never ends the server.
 *
 * `Deno.serve` offers none of these bounds, so the connection loop is ours;
 * requests and responses are still the platform's `Request` and `Response`,
 * and the handler is the Hono app's `fetch`.
 */
import type { Logger } from "../log.ts";

/** What one client may hold, and for how long. */
export interface HttpLimits {
  /** Open connections at most; more are closed as soon as they are accepted. */
  readonly maxConnections: number;
  /** Open connections from one source address at most. */
  readonly maxConnectionsPerSource: number;
  /** A request head must be complete this long after its first byte (or after accept). */
  readonly headTimeoutMs: number;
  /** A request body must be complete this long after its head. */
  readonly bodyTimeoutMs: number;
  /** A kept-alive connection with no request for this long is closed. */
  readonly idleTimeoutMs: number;
  /** A write the client does not take within this ends the connection. */
  readonly writeTimeoutMs: number;
  /** Longest request line (method, target, version), else 414. */
  readonly maxRequestLineBytes: number;
  /** Longest request head (request line and headers), else 431. */
  readonly maxHeadBytes: number;
  /** Largest request body, else 413. */
  readonly maxBodyBytes: number;
}

export const DEFAULT_LIMITS: HttpLimits = {
  maxConnections: 16_384,
  maxConnectionsPerSource: 1024,
  headTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  // Longer than the idle time of clients' connection pools (90 s), so a
  // client never sends on a connection the server is just closing.
  idleTimeoutMs: 120_000,
  writeTimeoutMs: 30_000,
  maxRequestLineBytes: 8_192,
  maxHeadBytes: 16_384,
  maxBodyBytes: 64 * 1024,
};

/** What the handler learns about the connection. */
export interface ConnInfo {
  readonly remoteAddr: Deno.NetAddr;
}

export type HttpHandler = (req: Request, info: ConnInfo) => Response | Promise<Response>;

/**
 * Where a pushed body writes (see {@linkcode pushBody}). Chunks go out in the
 * order written; the source learns the connection took them from `pull()`.
 */
export interface BodySink {
  /** Writes a chunk (queued behind one still being written). */
  write(chunk: Uint8Array): void;
  /** Ends the body once what was written is out. */
  close(): void;
  /** Ends the connection at once, without the body's end (as a stream's error does). */
  abort(): void;
}

/** What the server calls on a pushed body's source. */
export interface BodySource {
  /** The connection took everything written so far: the source may write the next chunk. */
  pull(): void;
  /** The client went away or a write failed: write no more. */
  cancel(): void;
}

/**
 * Attaches a source to the server's sink; undefined when the body cannot be
 * pushed any more (it already ended), and the server reads the stream instead.
 */
export type PushAttach = (sink: BodySink) => BodySource | undefined;

const pushed = new WeakMap<ReadableStream<Uint8Array>, PushAttach>();

/**
 * Marks an event stream's body as one the server may be handed instead of
 * reading it: the source then writes each chunk to the connection itself, with
 * no stream read, promise or timer per chunk; a shared timer bounds the writes.
 * Servers that do not know the mark (`app.request()`) read the stream.
 */
export function pushBody(stream: ReadableStream<Uint8Array>, attach: PushAttach): void {
  pushed.set(stream, attach);
}

/** Counters for /metrics. */
export interface HttpStats {
  /** Connections open now. */
  readonly open: number;
  readonly accepted: number;
  /** Closed at once: over the total or the per-source bound. */
  readonly refused: number;
  /** Closed for a head, body, idle or write time-out. */
  readonly timedOut: number;
  /** Requests answered 400, 413, 414, 431 or 501 before the handler saw them. */
  readonly rejected: number;
  /** accept() failures (out of file descriptors and the like). */
  readonly acceptErrors: number;
}

export interface ServeHttpOptions {
  readonly limits?: Partial<HttpLimits>;
  readonly logger?: Logger;
  /** "https" when the listener is a TLS one (for the URL handlers see). */
  readonly scheme?: "http" | "https";
}

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");
const CRLF = encoder.encode("\r\n");
const LAST_CHUNK = encoder.encode("0\r\n\r\n");
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  204: "No Content",
  304: "Not Modified",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  411: "Length Required",
  413: "Content Too Large",
  414: "URI Too Long",
  417: "Expectation Failed",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
};

/** A request refused before the handler saw it: answered, then the connection closes. */
class Rejection extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The connection was closed under a read or write (time-out, shutdown, peer gone). */
class Closed extends Error {}

/** One connection's bytes in, with a timer that closes it when a deadline passes. */
class Conn {
  readonly conn: Deno.Conn;
  // Small while idle (a pending read holds its buffer); grown for a large head.
  buf = new Uint8Array(1024);
  start = 0;
  end = 0;
  closed = false;
  timedOut = false;
  /** When a pushed body's write began (0: none in progress), for the shared write time-out. */
  pushSince = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }

  /** Closes the connection once `ms` pass, unless {@linkcode disarm}ed first. */
  arm(ms: number): void {
    this.disarm();
    this.#timer = setTimeout(() => {
      this.timedOut = true;
      this.close();
    }, ms);
  }

  disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  close(): void {
    this.disarm();
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed
    }
  }

  get buffered(): number {
    return this.end - this.start;
  }

  /** Reads more bytes (keeping at most `limit` buffered); false at the end of the stream. */
  async fill(limit: number): Promise<boolean> {
    if (this.start > 0 && this.start === this.end) this.start = this.end = 0;
    if (this.end === this.buf.length) {
      if (this.start > 0) {
        this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      } else {
        const grown = new Uint8Array(Math.min(this.buf.length * 4, limit + 1));
        if (grown.length <= this.buf.length) return true; // full: the caller judges the size
        grown.set(this.buf.subarray(0, this.end));
        this.buf = grown;
      }
    }
    let n: number | null;
    try {
      n = await this.conn.read(this.buf.subarray(this.end));
    } catch {
      throw new Closed();
    }
    if (n === null) return false;
    this.end += n;
    return true;
  }

  /** Takes `n` buffered bytes (a copy). */
  take(n: number): Uint8Array<ArrayBuffer> {
    const out = this.buf.slice(this.start, this.start + n);
    this.start += n;
    return out;
  }

  async write(bytes: Uint8Array, timeoutMs: number): Promise<void> {
    this.arm(timeoutMs);
    try {
      for (let done = 0; done < bytes.length;) {
        done += await this.conn.write(bytes.subarray(done));
      }
    } catch {
      throw new Closed();
    } finally {
      this.disarm();
    }
  }
}

/** A request head as read off the wire. */
interface Head {
  readonly method: string;
  readonly target: string;
  readonly headers: [string, string][];
  readonly keepAlive: boolean;
  readonly contentLength: number | undefined;
  readonly chunked: boolean;
  readonly expectContinue: boolean;
  readonly host: string | undefined;
}

/** Index of CRLF CRLF at or after `from`, or -1. */
function headEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = from; i + 3 < to; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

function lineEnd(buf: Uint8Array, from: number, to: number): number {
  for (let i = from; i + 1 < to; i++) if (buf[i] === 13 && buf[i + 1] === 10) return i;
  return -1;
}

/** Parses a request head (without its final CRLF CRLF); Rejection when it is malformed. */
export function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const requestLine = lines[0] ?? "";
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP\/1\.([01])$/.exec(requestLine);
  if (m === null) throw new Rejection(400, "the request line is not METHOD TARGET HTTP/1.x");
  const [, method = "", target = "", minor] = m;
  if (!target.startsWith("/") && !(method === "OPTIONS" && target === "*")) {
    throw new Rejection(400, "the request target must be a path");
  }
  if (lines.length > 101) throw new Rejection(431, "more than 100 header fields");
  const headers: [string, string][] = [];
  let contentLength: number | undefined;
  let chunked = false;
  let transferEncoding = false;
  let connection = "";
  let expectContinue = false;
  let host: string | undefined;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith(" ") || line.startsWith("\t")) {
      throw new Rejection(400, "folded header lines are not accepted");
    }
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) throw new Rejection(400, `"${line.slice(0, 40)}" is not a header field`);
    const value = line.slice(colon + 1).trim();
    if (/[\0\r\n]/.test(value)) {
      throw new Rejection(400, `header ${name} holds a control character`);
    }
    const lower = name.toLowerCase();
    if (lower === "content-length") {
      if (!/^\d{1,15}$/.test(value)) throw new Rejection(400, "Content-Length is not a number");
      const n = Number(value);
      if (contentLength !== undefined && contentLength !== n) {
        throw new Rejection(400, "two different Content-Length fields");
      }
      contentLength = n;
    } else if (lower === "transfer-encoding") {
      transferEncoding = true;
      chunked = value.toLowerCase() === "chunked";
      if (!chunked) throw new Rejection(501, `Transfer-Encoding ${value} is not supported`);
    } else if (lower === "connection") {
      connection = value.toLowerCase();
    } else if (lower === "expect") {
      if (value.toLowerCase() !== "100-continue") {
        throw new Rejection(417, `Expect: ${value} is not supported`);
      }
      expectContinue = true;
    } else if (lower === "host") {
      host = value;
    }
    headers.push([name, value]);
  }
  if (transferEncoding && contentLength !== undefined) {
    throw new Rejection(400, "both Transfer-Encoding and Content-Length");
  }
  const keepAlive = minor === "1"
    ? !/(^|,)\s*close\s*(,|$)/.test(connection)
    : /(^|,)\s*keep-alive\s*(,|$)/.test(connection);
  return { method, target, headers, keepAlive, contentLength, chunked, expectContinue, host };
}

/** Serves `handler` on `listener` within `limits` until {@linkcode HttpServer.shutdown}. */
export function serveHttp(
  listener: Deno.Listener,
  handler: HttpHandler,
  options: ServeHttpOptions = {},
): HttpServer {
  return new HttpServer(listener, handler, options);
}

export class HttpServer {
  readonly limits: HttpLimits;
  /** Resolves when the server has stopped accepting and every connection has ended. */
  readonly finished: Promise<void>;
  readonly #listener: Deno.Listener;
  readonly #handler: HttpHandler;
  readonly #log: Logger | undefined;
  readonly #scheme: string;
  readonly #conns = new Set<Conn>();
  /** Connections between requests: closed at once on shutdown. */
  readonly #idle = new Set<Conn>();
  readonly #perSource = new Map<string, number>();
  /** Connections serving a pushed body: one timer bounds their writes. */
  readonly #pushing = new Set<Conn>();
  #pushTimer: ReturnType<typeof setInterval> | undefined;
  #closing = false;
  #accepted = 0;
  #refused = 0;
  #timedOut = 0;
  #rejected = 0;
  #acceptErrors = 0;
  #lastAcceptWarning = 0;
  /** A descriptor held back for turning clients away when all others are used. */
  #reserve: Deno.FsFile | undefined = openReserve();
  readonly #allClosed = Promise.withResolvers<void>();

  constructor(listener: Deno.Listener, handler: HttpHandler, options: ServeHttpOptions) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#listener = listener;
    this.#handler = handler;
    this.#log = options.logger;
    this.#scheme = options.scheme ?? "http";
    this.finished = this.#acceptLoop().then(async () => {
      if (this.#conns.size > 0) await this.#allClosed.promise;
    });
  }

  get stats(): HttpStats {
    return {
      open: this.#conns.size,
      accepted: this.#accepted,
      refused: this.#refused,
      timedOut: this.#timedOut,
      rejected: this.#rejected,
      acceptErrors: this.#acceptErrors,
    };
  }

  /**
   * Stops accepting, closes idle connections at once and the rest when
   * their request is answered (or after `graceMs`), and resolves when all
   * have ended. Streaming responses end when their body does.
   */
  async shutdown(graceMs = 5_000): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      try {
        this.#listener.close();
      } catch {
        // already closed
      }
      this.#reserve?.close();
      this.#reserve = undefined;
      for (const c of this.#idle) c.close();
      const timer = setTimeout(() => {
        for (const c of this.#conns) c.close();
      }, graceMs);
      Deno.unrefTimer(timer);
    }
    await this.finished;
  }

  async #acceptLoop(): Promise<void> {
    let pause = 0;
    while (!this.#closing) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
        pause = 0;
      } catch (err) {
        if (this.#closing || err instanceof Deno.errors.BadResource) break;
        this.#acceptErrors++;
        // Out of file descriptors: give back the one held in reserve, so the
        // next accept succeeds and that client is turned away at once rather
        // than left hanging in the listen queue.
        if (/os error 2[34]\b|too many open files/i.test((err as Error).message) && this.#reserve) {
          this.#reserve.close();
          this.#reserve = undefined;
          this.#warnAccept(err, 0);
          continue;
        }
        // Otherwise (or with no descriptor in reserve) wait a moment and go on accepting.
        this.#reserve ??= openReserve();
        pause = Math.min(1000, pause === 0 ? 10 : pause * 2);
        this.#warnAccept(err, pause);
        await new Promise((r) => setTimeout(r, pause));
        continue;
      }
      this.#accepted++;
      if (this.#reserve === undefined && !this.#takeReserve()) {
        this.#refused++;
        try {
          conn.close();
        } catch {
          // gone already
        }
        continue;
      }
      const source = (conn.remoteAddr as Deno.NetAddr).hostname ?? "";
      const fromSource = this.#perSource.get(source) ?? 0;
      if (
        this.#conns.size >= this.limits.maxConnections ||
        fromSource >= this.limits.maxConnectionsPerSource
      ) {
        this.#refused++;
        try {
          conn.close();
        } catch {
          // gone already
        }
        continue;
      }
      this.#perSource.set(source, fromSource + 1);
      // Deltas on a watch stream are small writes: send each at once.
      (conn as Partial<Deno.TcpConn>).setNoDelay?.(true);
      const c = new Conn(conn);
      this.#conns.add(c);
      this.#serve(c).catch((err) => {
        this.#log?.error("A connection failed: {error}", { error: err });
      }).finally(() => {
        c.close();
        if (c.timedOut) this.#timedOut++;
        this.#conns.delete(c);
        this.#idle.delete(c);
        const left = (this.#perSource.get(source) ?? 1) - 1;
        if (left === 0) this.#perSource.delete(source);
        else this.#perSource.set(source, left);
        if (this.#closing && this.#conns.size === 0) this.#allClosed.resolve();
      });
    }
    if (this.#conns.size === 0) this.#allClosed.resolve();
  }

  /** A WARN at most every 10 s while accepting fails. */
  #warnAccept(err: unknown, pause: number): void {
    const now = Date.now();
    if (now - this.#lastAcceptWarning < 10_000) return;
    this.#lastAcceptWarning = now;
    this.#log?.warn(
      "Cannot accept a connection ({error}); {what} with {open} open",
      {
        error: (err as Error).message,
        what: pause === 0 ? "turning new ones away" : `retrying in ${pause} ms`,
        open: this.#conns.size,
      },
    );
  }

  /**
   * Takes the reserve descriptor back after it was spent; true when there is
   * room for one more connection besides it (then the one just accepted is
   * served), false when the process is still out of descriptors.
   */
  #takeReserve(): boolean {
    this.#reserve = openReserve();
    if (this.#reserve === undefined) return false;
    const probe = openReserve();
    probe?.close();
    return probe !== undefined;
  }

  /** Serves requests on one connection, one after another, until it closes. */
  async #serve(c: Conn): Promise<void> {
    const info: ConnInfo = { remoteAddr: c.conn.remoteAddr as Deno.NetAddr };
    // The first request (and a TLS handshake) gets the head time-out from accept.
    let first = true;
    while (!this.#closing && !c.closed) {
      let head: Head;
      try {
        const h = await this.#readHead(c, first);
        if (h === undefined) return;
        head = h;
      } catch (err) {
        if (err instanceof Rejection) return await this.#reject(c, err);
        return;
      }
      first = false;
      let body: Uint8Array<ArrayBuffer> | undefined;
      try {
        body = await this.#readBody(c, head);
      } catch (err) {
        if (err instanceof Rejection) return await this.#reject(c, err);
        return;
      }
      const host = head.host !== undefined && /^[A-Za-z0-9.:\[\]-]{1,255}$/.test(head.host)
        ? head.host
        : "localhost";
      let request: Request;
      try {
        request = new Request(
          `${this.#scheme}://${host}${head.target === "*" ? "/" : head.target}`,
          {
            method: head.method,
            headers: head.headers,
            ...(body !== undefined && head.method !== "GET" && head.method !== "HEAD"
              ? { body }
              : {}),
          },
        );
      } catch (err) {
        return await this.#reject(c, new Rejection(400, (err as Error).message));
      }
      let response: Response;
      try {
        response = await this.#handler(request, info);
      } catch (err) {
        this.#log?.error("Request failed: {error}", { error: err });
        response = Response.json({ error: "internal error" }, { status: 500 });
      }
      const keepAlive = head.keepAlive && !this.#closing;
      try {
        await this.#respond(c, head, response, keepAlive);
      } catch {
        return;
      }
      if (!keepAlive) return;
    }
  }

  /** Reads the next request head; undefined when the client closed between requests. */
  async #readHead(c: Conn, first: boolean): Promise<Head | undefined> {
    const L = this.limits;
    if (c.buffered === 0) {
      // Between requests: idle, closed at once on shutdown.
      this.#idle.add(c);
      c.arm(first ? L.headTimeoutMs : L.idleTimeoutMs);
      try {
        if (!(await c.fill(L.maxHeadBytes))) return undefined;
      } catch {
        return undefined;
      } finally {
        this.#idle.delete(c);
      }
    }
    c.arm(L.headTimeoutMs);
    let scanned = c.start;
    for (;;) {
      const end = headEnd(c.buf, Math.max(c.start, scanned - 3), c.end);
      if (end >= 0) {
        if (end - c.start > L.maxHeadBytes) {
          throw new Rejection(431, `the request head is over ${L.maxHeadBytes} bytes`);
        }
        const text = latin1.decode(c.buf.subarray(c.start, end));
        c.start = end + 4;
        c.disarm();
        if (
          (text.indexOf("\r\n") < 0 ? text.length : text.indexOf("\r\n")) > L.maxRequestLineBytes
        ) {
          throw new Rejection(414, `the request line is over ${L.maxRequestLineBytes} bytes`);
        }
        return parseHead(text);
      }
      scanned = c.end;
      const lineDone = lineEnd(c.buf, c.start, c.end) >= 0;
      if (!lineDone && c.buffered > L.maxRequestLineBytes) {
        throw new Rejection(414, `the request line is over ${L.maxRequestLineBytes} bytes`);
      }
      if (c.buffered > L.maxHeadBytes) {
        throw new Rejection(431, `the request head is over ${L.maxHeadBytes} bytes`);
      }
      if (!(await c.fill(L.maxHeadBytes))) {
        if (c.timedOut) return undefined;
        throw new Rejection(400, "the connection ended inside a request head");
      }
    }
  }

  /** Reads a request body within its bounds (undefined when there is none). */
  async #readBody(c: Conn, head: Head): Promise<Uint8Array<ArrayBuffer> | undefined> {
    const L = this.limits;
    if (head.contentLength !== undefined && head.contentLength > L.maxBodyBytes) {
      throw new Rejection(413, `the body is over ${L.maxBodyBytes} bytes`);
    }
    if (!head.chunked && (head.contentLength ?? 0) === 0) return undefined;
    if (head.expectContinue) {
      await c.write(encoder.encode("HTTP/1.1 100 Continue\r\n\r\n"), L.writeTimeoutMs);
    }
    c.arm(L.bodyTimeoutMs);
    try {
      if (!head.chunked) {
        const n = head.contentLength!;
        while (c.buffered < n) {
          if (!(await c.fill(Math.max(n, L.maxHeadBytes)))) throw new Closed();
        }
        return c.take(n);
      }
      return await this.#readChunked(c);
    } finally {
      c.disarm();
    }
  }

  async #readChunked(c: Conn): Promise<Uint8Array<ArrayBuffer>> {
    const L = this.limits;
    const parts: Uint8Array[] = [];
    let total = 0;
    const line = async (): Promise<string> => {
      for (;;) {
        const e = lineEnd(c.buf, c.start, c.end);
        if (e >= 0) {
          const text = latin1.decode(c.buf.subarray(c.start, e));
          c.start = e + 2;
          return text;
        }
        if (c.buffered > 1024) throw new Rejection(400, "a chunk line is too long");
        if (!(await c.fill(L.maxHeadBytes))) throw new Closed();
      }
    };
    for (;;) {
      const sizeText = (await line()).split(";")[0]!.trim();
      if (!/^[0-9a-fA-F]{1,8}$/.test(sizeText)) throw new Rejection(400, "a chunk size is invalid");
      const size = parseInt(sizeText, 16);
      if (size === 0) break;
      total += size;
      // Stop at the cap: the rest of the body is never read.
      if (total > L.maxBodyBytes) {
        throw new Rejection(413, `the body is over ${L.maxBodyBytes} bytes`);
      }
      while (c.buffered < size + 2) {
        if (!(await c.fill(Math.max(size + 2, L.maxHeadBytes)))) throw new Closed();
      }
      parts.push(c.take(size));
      if (c.buf[c.start] !== 13 || c.buf[c.start + 1] !== 10) {
        throw new Rejection(400, "a chunk does not end with CRLF");
      }
      c.start += 2;
    }
    // Trailer fields, up to the empty line.
    for (let n = 0; (await line()) !== ""; n++) {
      if (n > 32) throw new Rejection(431, "too many trailer fields");
    }
    const body = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      body.set(p, at);
      at += p.length;
    }
    return body;
  }

  /** Answers a request refused before the handler, then closes. */
  async #reject(c: Conn, r: Rejection): Promise<void> {
    if (c.closed) return;
    this.#rejected++;
    const body = encoder.encode(JSON.stringify({ error: `Cannot read the request: ${r.message}` }));
    const head = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? ""}\r\n` +
      `content-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`;
    try {
      await c.write(concat(encoder.encode(head), body), this.limits.writeTimeoutMs);
    } catch {
      // the client is gone
    }
  }

  /** Writes a response: buffered with a length, or chunked as it streams (event streams). */
  async #respond(c: Conn, head: Head, res: Response, keepAlive: boolean): Promise<void> {
    const L = this.limits;
    const noBody = head.method === "HEAD" || res.status === 204 || res.status === 304;
    // `res.body` turns a body given whole into a stream, read back chunk by
    // chunk: only event streams are looked at that way.
    const streaming = !noBody &&
      (res.headers.get("content-type") ?? "").startsWith("text/event-stream") && res.body !== null;
    let lines = `HTTP/1.1 ${res.status} ${REASONS[res.status] ?? res.statusText}\r\n`;
    for (const [k, v] of res.headers) {
      if (k === "content-length" || k === "transfer-encoding" || k === "connection") continue;
      lines += `${k}: ${v}\r\n`;
    }
    if (!keepAlive) lines += "connection: close\r\n";
    if (!streaming) {
      const body = noBody ? new Uint8Array(0) : await res.bytes();
      if (noBody) await res.body?.cancel();
      if (res.status !== 204 && res.status !== 304) lines += `content-length: ${body.length}\r\n`;
      lines += "\r\n";
      if (body.length < LARGE_BODY) {
        await c.write(concat(encoder.encode(lines), body), L.writeTimeoutMs);
      } else {
        // A large body (a peer snapshot) is not copied behind its head.
        await c.write(encoder.encode(lines), L.writeTimeoutMs);
        await c.write(body, L.writeTimeoutMs);
      }
      return;
    }
    lines += "transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n";
    const attach = pushed.get(res.body!);
    if (attach !== undefined) {
      try {
        await c.write(encoder.encode(lines), L.writeTimeoutMs);
      } catch (err) {
        res.body!.cancel().catch(() => {});
        throw err;
      }
      if (await this.#push(c, attach)) return;
      lines = "";
    }
    const reader = res.body!.getReader();
    // While the response streams, a client that goes away ends it.
    let ended = false;
    const watch = (async () => {
      try {
        while (!ended && (await c.fill(L.maxHeadBytes)) && c.buffered <= L.maxHeadBytes);
      } catch {
        // closed
      }
      if (!ended) reader.cancel().catch(() => {});
    })();
    try {
      if (lines !== "") await c.write(encoder.encode(lines), L.writeTimeoutMs);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (value.length === 0) continue;
        if (value.length < 16_384) await c.write(chunkOf(value), L.writeTimeoutMs);
        else {
          await c.write(encoder.encode(value.length.toString(16) + "\r\n"), L.writeTimeoutMs);
          await c.write(value, L.writeTimeoutMs);
          await c.write(CRLF, L.writeTimeoutMs);
        }
      }
      await c.write(LAST_CHUNK, L.writeTimeoutMs);
    } catch (err) {
      reader.cancel().catch(() => {});
      throw err;
    } finally {
      ended = true;
      // A stream's end closes the connection: the watcher above holds its reads.
      c.close();
      await watch;
    }
  }

  /**
   * Serves a pushed body (its head is out) until it ends, the client leaves
   * or a write fails; false when the source would not attach (the caller
   * reads the stream instead).
   */
  async #push(c: Conn, attach: PushAttach): Promise<boolean> {
    const L = this.limits;
    const done = Promise.withResolvers<void>();
    const queue: Uint8Array[] = [];
    let writing = false;
    let closing = false;
    let ended = false;
    // Set once attached; a sink's callbacks may run while attach() still does.
    const to: { source?: BodySource } = {};
    const finish = (cancel: boolean) => {
      if (ended) return;
      ended = true;
      c.pushSince = 0;
      c.close();
      if (cancel) to.source?.cancel();
      done.resolve();
    };
    const next = () => {
      const chunk = queue.shift();
      if (chunk === undefined) {
        writing = false;
        c.pushSince = 0;
        if (closing) {
          closing = false;
          writing = true;
          this.#writeAll(c, LAST_CHUNK, () => finish(false), () => finish(false));
        } else to.source?.pull();
        return;
      }
      c.pushSince = Date.now();
      this.#writeAll(c, chunk, next, () => finish(true));
    };
    const sink: BodySink = {
      write: (chunk) => {
        if (ended || chunk.length === 0) return;
        if (chunk.length < 16_384) queue.push(chunkOf(chunk));
        else queue.push(encoder.encode(chunk.length.toString(16) + "\r\n"), chunk, CRLF);
        if (!writing) {
          writing = true;
          next();
        }
      },
      close: () => {
        if (ended) return;
        closing = true;
        if (!writing) {
          writing = true;
          next();
        }
      },
      abort: () => finish(false),
    };
    const source = attach(sink);
    if (source === undefined) return false;
    to.source = source;
    this.#pushing.add(c);
    this.#startPushTimer();
    // A client that goes away ends the body (its reads are held here).
    const watch = (async () => {
      try {
        while (!ended && (await c.fill(L.maxHeadBytes)) && c.buffered <= L.maxHeadBytes);
      } catch {
        // closed
      }
      finish(true);
    })();
    source.pull();
    try {
      await done.promise;
      await watch;
    } finally {
      this.#pushing.delete(c);
      if (this.#pushing.size === 0) this.#stopPushTimer();
    }
    return true;
  }

  /** Writes all of `bytes`, then calls `ok` (or `failed`), without a promise chain per caller. */
  #writeAll(c: Conn, bytes: Uint8Array, ok: () => void, failed: () => void): void {
    const from = (at: number) => {
      c.conn.write(at === 0 ? bytes : bytes.subarray(at)).then((n) => {
        if (at + n < bytes.length) from(at + n);
        else ok();
      }, failed);
    };
    from(0);
  }

  /**
   * One timer bounds every pushed write: a write not taken within the write
   * time-out ends its connection, as a write's own timer does elsewhere.
   */
  #startPushTimer(): void {
    if (this.#pushTimer !== undefined) return;
    const timeout = this.limits.writeTimeoutMs;
    this.#pushTimer = setInterval(() => {
      const now = Date.now();
      for (const c of this.#pushing) {
        if (c.pushSince === 0 || now - c.pushSince < timeout) continue;
        c.timedOut = true;
        c.close();
      }
    }, Math.max(10, Math.min(1000, timeout / 4)));
    Deno.unrefTimer(this.#pushTimer);
  }

  #stopPushTimer(): void {
    if (this.#pushTimer === undefined) return;
    clearInterval(this.#pushTimer);
    this.#pushTimer = undefined;
  }
}

/** Bodies from this size on are written after their head rather than copied behind it. */
const LARGE_BODY = 64 * 1024;

/**
 * A small body chunk with its chunked-encoding frame. Watch streams are
 * handed the same frame objects, so each is framed once, not once a stream.
 */
const framed = new WeakMap<Uint8Array, Uint8Array>();

function chunkOf(value: Uint8Array): Uint8Array {
  let out = framed.get(value);
  if (out === undefined) {
    out = concat(encoder.encode(value.length.toString(16) + "\r\n"), value, CRLF);
    framed.set(value, out);
  }
  return out;
}

function openReserve(): Deno.FsFile | undefined {
  try {
    return Deno.openSync("/dev/null");
  } catch {
    return undefined;
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
