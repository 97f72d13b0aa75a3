import assert from "node:assert/strict";
import {
  checkTransport,
  ClusterClient,
  connectFailure,
  isLoopbackHost,
} from "../../lib/api/cluster_client.ts";
import { TransportError, UnavailableError } from "../../lib/errors.ts";

/** A failed fetch as Deno reports it: `fetch failed`, the reason in its cause. */
const failed = (cause: string) => new TypeError("fetch failed", { cause: new Error(cause) });

Deno.test("a request that got no answer names its cause; set-up mistakes are permanent", () => {
  const cases: [string, string, new (m: string) => Error, RegExp][] = [
    [
      "https://m:7443",
      "client error (Connect): invalid peer certificate: UnknownIssuer",
      TransportError,
      /certificate is refused: it is signed by a CA this node does not trust \(give that CA with --ca\)/,
    ],
    [
      "https://m:7443",
      "client error (Connect): invalid peer certificate: NotValidForName",
      TransportError,
      /issued for another name than the one in the URL/,
    ],
    [
      "https://m:7443",
      "client error (Connect): invalid peer certificate: Expired",
      TransportError,
      /it has expired/,
    ],
    [
      "http://m:7443",
      "client error (SendRequest): invalid HTTP version parsed",
      TransportError,
      /answers in TLS there; use https:\/\//,
    ],
    [
      "https://m:7443",
      "client error (Connect): received corrupt message of type InvalidContentType",
      TransportError,
      /does not speak TLS there/,
    ],
    [
      "http://m:7443",
      "client error (Connect): tcp connect error: Connection refused (os error 111)",
      UnavailableError,
      /^Cannot reach the cluster manager at http:\/\/m:7443: Connection refused \(os error 111\)$/,
    ],
  ];
  for (const [url, cause, cls, re] of cases) {
    const err = connectFailure(url, failed(`error sending request for url (${url}/): ${cause}`));
    assert.ok(err instanceof cls, `${cause}: ${err.name}`);
    assert.match(err.message, re);
  }
});

Deno.test("a token goes over plain HTTP only to loopback or with --insecure", () => {
  for (const host of ["localhost", "127.0.0.1", "127.9.9.9", "[::1]"]) {
    assert.ok(isLoopbackHost(host));
  }
  for (const host of ["192.0.2.1", "[2001:db8::1]", "manager", "127.0.0.1.example"]) {
    assert.ok(!isLoopbackHost(host), host);
  }
  checkTransport("http://127.0.0.1:7443", { insecure: false, flag: "--cluster" });
  checkTransport("https://192.0.2.1:7443", { insecure: false, flag: "--cluster" });
  checkTransport("http://192.0.2.1:7443", { insecure: true, flag: "--cluster" });
  assert.throws(
    () => checkTransport("http://192.0.2.1:7443", { insecure: false, flag: "--cluster" }),
    /Cannot send a token to http:\/\/192\.0\.2\.1:7443 over plain HTTP.*--insecure/,
  );
  assert.throws(
    () => checkTransport("192.0.2.254:7443", { insecure: false, flag: "the cluster URL" }),
    /Cannot use the cluster URL 192\.0\.2\.254:7443: not a URL \(expected https:\/\/HOST:PORT/,
  );
  assert.throws(
    () => checkTransport("ftp://m/", { insecure: false, flag: "--cluster" }),
    /expected https:\/\/ or http:\/\//,
  );
});

Deno.test("watch() reads frames ended by LF or CRLF blank lines, however the stream is cut", async () => {
  const text = [
    `event: snapshot\ndata: {"type":"snapshot","revision":1,"peers":[]}\nid: 1\n\n`,
    `: comment\r\nevent: ping\r\ndata: {"revision":1}\r\n\r\n`,
    `event: delta\r\ndata: {"type":"delete","revision":2,"kind":"node","name":"a","publicKey":"k"}\r\nid: 2\r\n\r\n\n`,
    `event: delta\ndata: {"type":"delete","revision":3,"kind":"node","name":"b",\ndata: "publicKey":"k"}\n\n`,
  ].join("");
  const bytes = new TextEncoder().encode(text);
  for (const piece of [1, 2, 3, 7, bytes.length]) {
    await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < bytes.length; i += piece) c.enqueue(bytes.slice(i, i + piece));
          c.close();
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream" } });
    });
    const api = new ClusterClient(`http://127.0.0.1:${server.addr.port}`, { token: "t" });
    const revisions: number[] = [];
    const pings: number[] = [];
    for await (const e of api.watch(undefined, undefined, { onPing: (r) => pings.push(r) })) {
      revisions.push(e.revision);
    }
    assert.deepEqual([revisions, pings], [[1, 2, 3], [1]], `pieces of ${piece} bytes`);
  }
});
