/**
 * The cluster manager's HTTP/1.1 server over real TCP connections on
 * loopback: requests and keep-alive, streaming, and every bound a client
 * must not get past (time-outs, connection counts, sizes).
 */
import assert from "node:assert/strict";
import {
  type BodySink,
  type HttpLimits,
  type HttpServer,
  parseHead,
  pushBody,
  serveHttp,
} from "../../lib/api/http_server.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A server on 127.0.0.1 with tight limits; stopped at the end of the test. */
async function withServer(
  limits: Partial<HttpLimits>,
  handler: (req: Request) => Response | Promise<Response>,
  fn: (port: number, server: HttpServer) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = serveHttp(listener, handler, { limits });
  try {
    await fn((listener.addr as Deno.NetAddr).port, server);
  } finally {
    await server.shutdown(100);
  }
}

const ok = () => new Response("ok\n");

/** What the server sends until the text holds `needle` (or the connection ends). */
async function readUntil(conn: Deno.Conn, needle: string): Promise<string> {
  let text = "";
  const buf = new Uint8Array(4096);
  while (!text.includes(needle)) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += dec.decode(buf.subarray(0, n));
  }
  return text;
}

async function connect(port: number): Promise<Deno.TcpConn> {
  return await Deno.connect({ hostname: "127.0.0.1", port });
}

/** Everything the server sends until it closes (or `ms` pass: then "TIMEOUT" is appended). */
async function readAll(conn: Deno.Conn, ms = 5000): Promise<string> {
  let text = "";
  const buf = new Uint8Array(65536);
  const timer = setTimeout(() => {
    text += "TIMEOUT";
    try {
      conn.close();
    } catch {
      // closed
    }
  }, ms);
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += dec.decode(buf.subarray(0, n));
    }
  } catch {
    // reset or closed by the timer
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // closed
    }
  }
  return text;
}

async function send(conn: Deno.Conn, text: string): Promise<void> {
  await conn.write(enc.encode(text));
}

Deno.test("parseHead() reads method, target, headers and what the connection and body are", () => {
  const h = parseHead(
    "POST /v1/nodes?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nConnection: close",
  );
  assert.equal(h.method, "POST");
  assert.equal(h.target, "/v1/nodes?x=1");
  assert.equal(h.contentLength, 12);
  assert.equal(h.keepAlive, false);
  assert.equal(parseHead("GET / HTTP/1.0").keepAlive, false);
  assert.equal(parseHead("GET / HTTP/1.0\r\nConnection: keep-alive").keepAlive, true);
  assert.equal(parseHead("GET / HTTP/1.1\r\nTransfer-Encoding: chunked").chunked, true);
  for (
    const [head, status] of [
      ["GET /", 400],
      ["GET http://evil/ HTTP/1.1", 400],
      ["GET / HTTP/1.1\r\nbad header", 400],
      ["GET / HTTP/1.1\r\n folded: x", 400],
      ["GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400],
      ["GET / HTTP/1.1\r\nContent-Length: -1", 400],
      ["GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2", 400],
      ["GET / HTTP/1.1\r\nTransfer-Encoding: gzip", 501],
      ["GET / HTTP/1.1\r\nExpect: magic", 417],
    ] as const
  ) {
    assert.throws(() => parseHead(head), (e: { status?: number }) => e.status === status, head);
  }
});

Deno.test("requests on one kept-alive connection are answered in order, with lengths", async () => {
  await withServer({}, async (req) => {
    const body = req.body ? await req.text() : "";
    return Response.json({ method: req.method, path: new URL(req.url).pathname, body });
  }, async (port) => {
    const conn = await connect(port);
    await send(
      conn,
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
        "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n" +
        "GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    const text = await readAll(conn);
    const bodies = [...text.matchAll(/\r\n\r\n(\{[^}]*\})/g)].map((m) => JSON.parse(m[1]!));
    assert.deepEqual(bodies, [
      { method: "GET", path: "/a", body: "" },
      { method: "POST", path: "/b", body: "hello" },
      { method: "POST", path: "/c", body: "abcde" },
      { method: "GET", path: "/d", body: "" },
    ]);
    assert.equal((text.match(/HTTP\/1\.1 200 OK\r\n/g) ?? []).length, 4);
    assert.match(text, /connection: close\r\n/);
  });
});

Deno.test("an event stream goes out chunked as it is written and ends when the client leaves", async () => {
  let cancelled = Promise.withResolvers<void>();
  await withServer({}, () => {
    cancelled = Promise.withResolvers<void>();
    let n = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull: async (c) => {
        await new Promise((r) => setTimeout(r, 20));
        c.enqueue(enc.encode(`data: ${n++}\n\n`));
      },
      cancel: () => cancelled.resolve(),
    });
    return new Response(stream, { headers: { "content-type": "text/event-stream" } });
  }, async (port) => {
    const conn = await connect(port);
    await send(conn, "GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    const text = await readUntil(conn, "data: 2");
    assert.match(text, /transfer-encoding: chunked/);
    assert.match(text, /\r\n9\r\ndata: 0\n\n\r\n/);
    conn.close();
    await cancelled.promise;
  });
});

/** An event stream whose chunks the server takes pushed; `onAttach` gets the sink. */
function pushedResponse(
  onAttach: (sink: BodySink) => void,
  source: { pull?: () => void; cancel?: () => void } = {},
): Response {
  const stream = new ReadableStream<Uint8Array>({
    pull: (c) => c.enqueue(enc.encode("data: read\n\n")),
  }, { highWaterMark: 0 });
  pushBody(stream, (sink) => {
    onAttach(sink);
    return { pull: source.pull ?? (() => {}), cancel: source.cancel ?? (() => {}) };
  });
  return new Response(stream, { headers: { "content-type": "text/event-stream" } });
}

Deno.test("a pushed event stream goes out chunked in order and ends with the last chunk", async () => {
  await withServer({}, () =>
    pushedResponse((sink) => {
      sink.write(enc.encode("data: 0\n\n"));
      sink.write(enc.encode("data: 1\n\n"));
      sink.write(new Uint8Array(20_000).fill(120));
      sink.close();
    }), async (port) => {
    const conn = await connect(port);
    await send(conn, "GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    const text = await readAll(conn);
    assert.match(text, /transfer-encoding: chunked/);
    assert.match(
      text,
      /\r\n9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n4e20\r\nx{20000}\r\n0\r\n\r\n$/,
    );
    assert.doesNotMatch(text, /data: read/);
  });
});

Deno.test("a pushed event stream is pulled once each write is out and cancelled when the client leaves", async () => {
  const cancelled = Promise.withResolvers<void>();
  let n = 0;
  let sink: BodySink | undefined;
  await withServer({}, () =>
    pushedResponse((s) => sink = s, {
      pull: () => setTimeout(() => sink?.write(enc.encode(`data: ${n++}\n\n`)), 20),
      cancel: () => cancelled.resolve(),
    }), async (port) => {
    const conn = await connect(port);
    await send(conn, "GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    const text = await readUntil(conn, "data: 2");
    assert.match(text, /\r\n9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n/);
    conn.close();
    await cancelled.promise;
  });
});

Deno.test("a pushed event stream its client does not read is dropped at the write time-out", async () => {
  const cancelled = Promise.withResolvers<void>();
  const big = new Uint8Array(1024 * 1024);
  let sink: BodySink | undefined;
  await withServer({ writeTimeoutMs: 300 }, () =>
    pushedResponse((s) => sink = s, {
      pull: () => sink?.write(big),
      cancel: () => cancelled.resolve(),
    }), async (port, server) => {
    const conn = await connect(port);
    await send(conn, "GET /watch HTTP/1.1\r\nHost: x\r\n\r\n");
    // Never read: the socket buffers fill and the server's write stalls.
    await cancelled.promise;
    const t0 = Date.now();
    while (server.stats.open > 0 && Date.now() - t0 < 5000) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(server.stats.timedOut, 1);
    conn.close();
  });
});

Deno.test("a request head sent a byte at a time is cut off at the head time-out", async () => {
  await withServer({ headTimeoutMs: 300 }, ok, async (port, server) => {
    const conn = await connect(port);
    const t0 = Date.now();
    const trickle = (async () => {
      for (const ch of "GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: 1234567890") {
        try {
          await send(conn, ch);
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const text = await readAll(conn, 5000);
    await trickle;
    assert.equal(text, "");
    assert.ok(Date.now() - t0 < 2000, `closed after ${Date.now() - t0} ms`);
    assert.equal(server.stats.timedOut, 1);
  });
});

Deno.test("a connection that never sends, or stays idle after a request, is closed", async () => {
  await withServer({ headTimeoutMs: 200, idleTimeoutMs: 400 }, ok, async (port, server) => {
    const silent = await connect(port);
    assert.equal(await readAll(silent, 3000), "");
    const kept = await connect(port);
    await send(kept, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    const t0 = Date.now();
    const text = await readAll(kept, 3000);
    assert.match(text, /^HTTP\/1\.1 200 OK/);
    assert.ok(!text.includes("TIMEOUT"));
    assert.ok(Date.now() - t0 >= 300, "kept alive for the idle time");
    assert.equal(server.stats.timedOut, 2);
  });
});

Deno.test("a body that does not arrive in time is cut off", async () => {
  await withServer({ bodyTimeoutMs: 300 }, ok, async (port) => {
    const conn = await connect(port);
    await send(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part");
    assert.equal(await readAll(conn, 3000), "");
  });
});

Deno.test("over-long lines, heads and bodies are answered 414, 431 and 413 without reading on", async () => {
  let handled = 0;
  const limits = { maxRequestLineBytes: 200, maxHeadBytes: 1000, maxBodyBytes: 1000 };
  await withServer(limits, () => {
    handled++;
    return ok();
  }, async (port, server) => {
    const cases: [string, RegExp][] = [
      [`GET /${"a".repeat(300)} HTTP/1.1\r\nHost: x\r\n\r\n`, /^HTTP\/1\.1 414 /],
      [`GET /${"a".repeat(300)}`, /^HTTP\/1\.1 414 /],
      [`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(1200)}\r\n\r\n`, /^HTTP\/1\.1 431 /],
      [`POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n`, /^HTTP\/1\.1 413 /],
    ];
    for (const [request, status] of cases) {
      const conn = await connect(port);
      await send(conn, request);
      const text = await readAll(conn);
      assert.match(text, status, request.slice(0, 40));
      assert.match(text, /"error":"Cannot read the request: /);
    }
    // A chunked body is refused as soon as it passes the cap; the rest is never read.
    const conn = await connect(port);
    await send(conn, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    const writer = (async () => {
      const chunk = enc.encode(`400\r\n${"c".repeat(0x400)}\r\n`);
      let sent = 0;
      try {
        for (let i = 0; i < 64 * 1024; i++) {
          await conn.write(chunk);
          sent += chunk.length;
        }
      } catch {
        // the server closed the connection
      }
      return sent;
    })();
    const text = await readAll(conn);
    assert.match(text, /^HTTP\/1\.1 413 /);
    assert.ok((await writer) < 64 * 1024 * 1024, "the server stopped reading at the cap");
    assert.equal(handled, 0, "no refused request reached the handler");
    assert.equal(server.stats.rejected, 5);
  });
});

Deno.test("connections over the total or per-source bound are closed at once", async () => {
  await withServer({ maxConnections: 3, maxConnectionsPerSource: 2 }, ok, async (port, server) => {
    const a = await connect(port);
    const b = await connect(port);
    const c = await connect(port);
    // The third from this address is closed without an answer.
    await send(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").catch(() => {});
    assert.equal(await readAll(c, 3000), "");
    await send(a, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.match(await readAll(a), /^HTTP\/1\.1 200 OK/);
    // One left: a new connection is served again.
    const d = await connect(port);
    await send(d, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.match(await readAll(d), /^HTTP\/1\.1 200 OK/);
    b.close();
    assert.ok(server.stats.refused >= 1);
  });
});

Deno.test("a client that does not read its answer is dropped at the write time-out", async () => {
  const big = new Uint8Array(64 * 1024 * 1024);
  await withServer({ writeTimeoutMs: 300 }, () => new Response(big), async (port, server) => {
    const conn = await connect(port);
    await send(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // Never read: the socket buffers fill and the server's write stalls.
    const t0 = Date.now();
    while (server.stats.open > 0 && Date.now() - t0 < 10_000) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(server.stats.open, 0);
    assert.equal(server.stats.timedOut, 1);
    conn.close();
  });
});

Deno.test("shutdown() closes idle connections at once and waits for answers in progress", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const release = Promise.withResolvers<void>();
  const server = serveHttp(listener, async () => {
    await release.promise;
    return ok();
  });
  const idle = await connect(port);
  const busy = await connect(port);
  await send(busy, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  await new Promise((r) => setTimeout(r, 100));
  const done = server.shutdown(5000);
  assert.equal(await readAll(idle), "");
  release.resolve();
  assert.match(await readAll(busy), /^HTTP\/1\.1 200 OK[\s\S]*connection: close/);
  await done;
  await assert.rejects(connect(port));
});
