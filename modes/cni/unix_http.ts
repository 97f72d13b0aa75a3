/**
 * One HTTP/1.1 POST over a unix socket, for the plugin's call to the node
 * manager. Written on `Deno.connect` because `fetch` with a unix-socket
 * client costs about 20 ms of start-up in a fresh process, paid on every
 * pod ADD and DEL; this costs about 2 ms. It speaks only what the node's
 * local API answers: one request per connection (`connection: close`), a
 * body framed by content-length, chunked encoding or the end of the
 * connection. No imports: this path runs for every pod.
 */

/** Largest answer read from the node manager. */
export const MAX_ANSWER = 16 * 1024 * 1024;

/** A status and the body as text. */
export interface UnixAnswer {
  readonly status: number;
  readonly body: string;
}

/** Why the call did not get an answer (connection, timeout or a malformed answer). */
export class UnixHttpError extends Error {
  override name = "UnixHttpError";
}

const enc = new TextEncoder();

/**
 * POSTs `body` (JSON text) to `path` on the server listening at `socket`;
 * rejects with {@linkcode UnixHttpError} when the connection fails, the
 * answer does not come whole within `timeoutMs`, or it is not HTTP/1.x.
 */
export async function postUnix(
  socket: string,
  path: string,
  body: string,
  timeoutMs: number,
): Promise<UnixAnswer> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path: socket });
  } catch (err) {
    throw new UnixHttpError((err as Error).message);
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeoutMs);
  try {
    const payload = enc.encode(body);
    const head = enc.encode(
      `POST ${path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n` +
        `content-length: ${payload.length}\r\nconnection: close\r\n\r\n`,
    );
    const request = new Uint8Array(head.length + payload.length);
    request.set(head);
    request.set(payload, head.length);
    await writeAll(conn, request);
    // Until the answer is whole by its own framing, or the server closes.
    const answer = await readUntil(conn, MAX_ANSWER, parseAnswer);
    if (answer === null) throw new UnixHttpError(`answer larger than ${MAX_ANSWER} bytes`);
    return answer;
  } catch (err) {
    if (timedOut) throw new UnixHttpError(`no whole answer within ${timeoutMs} ms`);
    if (err instanceof UnixHttpError) throw err;
    throw new UnixHttpError((err as Error).message);
  } finally {
    clearTimeout(timer);
    if (!timedOut) conn.close();
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** A source of bytes read into a buffer, as `Deno.stdin` and a connection are; null at the end. */
export interface ByteReader {
  read(p: Uint8Array): Promise<number | null>;
}

/**
 * Reads `r` into one growing buffer and hands what has come to `whole` after
 * every read and once more at the end (`atEnd`); returns its first value.
 * `whole` answers undefined while more must come, and at the end must
 * answer or throw. Null when more than `cap` bytes come first.
 */
export async function readUntil<T>(
  r: ByteReader,
  cap: number,
  whole: (bytes: Uint8Array, atEnd: boolean) => T | undefined,
): Promise<T | null> {
  let got = new Uint8Array(Math.min(64 * 1024, cap + 1));
  let length = 0;
  for (;;) {
    if (length === got.length) {
      const bigger = new Uint8Array(Math.min(got.length * 2, cap + 1));
      bigger.set(got);
      got = bigger;
    }
    const n = await r.read(got.subarray(length));
    const atEnd = n === null;
    if (!atEnd) length += n;
    if (length > cap) return null;
    const value = whole(got.subarray(0, length), atEnd);
    if (value !== undefined || atEnd) return value as T;
  }
}

/**
 * Parses an HTTP/1.x answer from the bytes read so far: the answer once it
 * is whole by its framing (content-length or chunked), undefined while more
 * must come. With `atEnd` (the server closed) a body without framing runs
 * to the end, and an incomplete answer is an error.
 */
export function parseAnswer(bytes: Uint8Array, atEnd: boolean): UnixAnswer | undefined {
  const incomplete = (why: string) => {
    if (atEnd) throw new UnixHttpError(why);
    return undefined;
  };
  const end = indexOfCrlfCrlf(bytes);
  if (end < 0) {
    return incomplete(
      bytes.length === 0 ? "connection closed without an answer" : "answer without a header end",
    );
  }
  const head = new TextDecoder().decode(bytes.subarray(0, end)).split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(head[0] ?? "");
  if (!status) throw new UnixHttpError(`not an HTTP answer: ${JSON.stringify(head[0])}`);
  const headers = new Map<string, string>();
  for (const line of head.slice(1)) {
    const i = line.indexOf(":");
    if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  let rest: Uint8Array | undefined = bytes.subarray(end + 4);
  if (/(^|,)\s*chunked\s*$/i.test(headers.get("transfer-encoding") ?? "")) {
    rest = dechunk(rest);
    if (rest === undefined) return incomplete("chunked answer cut short");
  } else if (headers.has("content-length")) {
    const text = headers.get("content-length") as string;
    if (!/^\d+$/.test(text)) throw new UnixHttpError(`bad content-length ${JSON.stringify(text)}`);
    const length = Number(text);
    if (rest.length < length) {
      return incomplete(`answer cut short: ${rest.length} of ${length} bytes`);
    }
    rest = rest.subarray(0, length);
  } else if (!atEnd) {
    return undefined;
  }
  return { status: Number(status[1]), body: new TextDecoder().decode(rest) };
}

function indexOfCrlfCrlf(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

/** Joins a chunked body; undefined while its last chunk has not come. Trailers are ignored. */
function dechunk(b: Uint8Array): Uint8Array | undefined {
  const parts: Uint8Array[] = [];
  let total = 0;
  let off = 0;
  for (;;) {
    let lineEnd = off;
    while (lineEnd + 1 < b.length && !(b[lineEnd] === 13 && b[lineEnd + 1] === 10)) lineEnd++;
    if (lineEnd + 1 >= b.length) return undefined;
    const sizeText = new TextDecoder().decode(b.subarray(off, lineEnd)).split(";")[0]?.trim();
    if (!sizeText || !/^[0-9a-fA-F]+$/.test(sizeText)) {
      throw new UnixHttpError(`bad chunk size ${JSON.stringify(sizeText)}`);
    }
    const size = parseInt(sizeText, 16);
    off = lineEnd + 2;
    if (size === 0) break;
    if (off + size + 2 > b.length) return undefined;
    parts.push(b.subarray(off, off + size));
    total += size;
    off += size + 2;
  }
  const all = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}
