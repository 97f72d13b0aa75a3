/** The plugin's HTTP client on a unix socket, against real servers on sockets in a temp dir. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { MAX_ANSWER, parseAnswer, postUnix, UnixHttpError } from "../../modes/cni/unix_http.ts";
import { serveOnSocket } from "./_unix_serve.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "wgcni-unix-http-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs `fn` against `Deno.serve(handler)` on a unix socket in a temp dir, then stops it. */
async function withServe(
  handler: Deno.ServeHandler,
  fn: (socket: string) => Promise<void>,
): Promise<void> {
  await using served = await serveOnSocket(handler);
  await fn(served.path);
}

/** A raw listener: `answer` gets each accepted connection and the request bytes read so far. */
function rawServer(
  path: string,
  answer: (conn: Deno.UnixConn, request: string) => Promise<void>,
): { close: () => Promise<void> } {
  const listener = Deno.listen({ transport: "unix", path });
  const open = new Set<Deno.UnixConn>();
  const served = (async () => {
    for await (const conn of listener) {
      open.add(conn);
      const buf = new Uint8Array(64 * 1024);
      let request = "";
      while (!request.includes("\r\n\r\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        request += dec.decode(buf.subarray(0, n));
      }
      await answer(conn, request);
    }
  })().catch(() => {});
  return {
    close: async () => {
      listener.close();
      for (const c of open) {
        try {
          c.close();
        } catch { /* closed by the handler */ }
      }
      await served;
    },
  };
}

Deno.test("a POST to Deno.serve on a unix socket gets status and body; the request is JSON", async () => {
  const seen: { method: string; path: string; type: string | null; body: unknown }[] = [];
  await withServe(async (req) => {
    seen.push({
      method: req.method,
      path: new URL(req.url).pathname,
      type: req.headers.get("content-type"),
      body: await req.json(),
    });
    return Response.json({ code: 7, msg: "réseau ☃" }, { status: 400 });
  }, async (socket) => {
    const a = await postUnix(socket, "/v1/cni/add", JSON.stringify({ pod: "web" }), 5000);
    assert.equal(a.status, 400);
    assert.deepEqual(JSON.parse(a.body), { code: 7, msg: "réseau ☃" });
    assert.deepEqual(seen, [{
      method: "POST",
      path: "/v1/cni/add",
      type: "application/json",
      body: { pod: "web" },
    }]);
  });
});

Deno.test("a streamed (chunked) answer is joined whole", async () => {
  const parts = ['{"a":', '"', "x".repeat(100_000), '"}'];
  await withServe(() => {
    const stream = new ReadableStream<Uint8Array>({
      async start(c) {
        for (const p of parts) {
          c.enqueue(enc.encode(p));
          await new Promise((r) => setTimeout(r, 5));
        }
        c.close();
      },
    });
    return new Response(stream, { headers: { "content-type": "application/json" } });
  }, async (socket) => {
    const a = await postUnix(socket, "/x", "{}", 5000);
    assert.equal(a.status, 200);
    assert.equal(a.body, parts.join(""));
  });
});

Deno.test("an answer whole by content-length returns while the server keeps the connection", async () => {
  await withDir(async (dir) => {
    const socket = join(dir, "s.sock");
    let answered = false;
    const server = rawServer(socket, async (conn) => {
      await conn.write(enc.encode('HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{"ok":1}'));
      answered = true; // and the connection stays open
    });
    try {
      const a = await postUnix(socket, "/x", "{}", 10_000);
      assert.ok(answered);
      assert.deepEqual(a, { status: 200, body: '{"ok":1}' });
    } finally {
      await server.close();
    }
  });
});

Deno.test("no listener, a silent server, a close without answer and a non-HTTP answer are errors", async () => {
  await withDir(async (dir) => {
    await assert.rejects(
      postUnix(join(dir, "none.sock"), "/x", "{}", 1000),
      (e) => e instanceof UnixHttpError,
    );
    const cases: [string, (conn: Deno.UnixConn) => Promise<void>, RegExp][] = [
      ["silent", () => Promise.resolve(), /no whole answer within 200 ms/],
      ["closes", (conn) => Promise.resolve(conn.close()), /closed without an answer/],
      ["garbage", async (conn) => {
        await conn.write(enc.encode("SSH-2.0-x\r\n\r\n"));
        conn.close();
      }, /not an HTTP answer/],
      ["short", async (conn) => {
        await conn.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"));
        conn.close();
      }, /cut short: 3 of 10 bytes/],
    ];
    for (const [name, answer, message] of cases) {
      const socket = join(dir, `${name}.sock`);
      const server = rawServer(socket, (conn) => answer(conn));
      try {
        await assert.rejects(postUnix(socket, "/x", "{}", 200), (e) => {
          assert.ok(e instanceof UnixHttpError, name);
          assert.match((e as Error).message, message, name);
          return true;
        });
      } finally {
        await server.close();
      }
    }
  });
});

Deno.test("an answer larger than the cap is refused", async () => {
  await withDir(async (dir) => {
    const socket = join(dir, "big.sock");
    const server = rawServer(socket, async (conn) => {
      try {
        await conn.write(
          enc.encode(`HTTP/1.1 200 OK\r\ncontent-length: ${MAX_ANSWER * 2}\r\n\r\n`),
        );
        const block = new Uint8Array(1024 * 1024);
        for (let sent = 0; sent < 2 * MAX_ANSWER;) sent += await conn.write(block);
      } catch { /* the client hung up at the cap */ }
    });
    try {
      await assert.rejects(postUnix(socket, "/x", "{}", 10_000), /larger than/);
    } finally {
      await server.close();
    }
  });
});

Deno.test("parseAnswer waits for its framing and reads a body without one to the end", () => {
  const b = (s: string) => enc.encode(s);
  assert.equal(parseAnswer(b("HTTP/1.1 200 OK\r\ncontent-le"), false), undefined);
  assert.equal(parseAnswer(b("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab"), false), undefined);
  assert.deepEqual(parseAnswer(b("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nabcd"), false), {
    status: 201,
    body: "ab",
  });
  const chunked =
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n";
  assert.equal(parseAnswer(b(chunked), false), undefined);
  assert.deepEqual(parseAnswer(b(chunked + "0\r\n\r\n"), false), { status: 200, body: "abcde" });
  assert.throws(() => parseAnswer(b(chunked), true), /chunked answer cut short/);
  assert.equal(parseAnswer(b("HTTP/1.0 200 OK\r\n\r\nto the end"), false), undefined);
  assert.deepEqual(parseAnswer(b("HTTP/1.0 200 OK\r\n\r\nto the end"), true), {
    status: 200,
    body: "to the end",
  });
  assert.throws(
    () => parseAnswer(b("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"), false),
    /bad content-length/,
  );
  assert.throws(
    () => parseAnswer(b("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"), false),
    /bad chunk size/,
  );
});
