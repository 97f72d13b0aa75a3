import assert from "node:assert/strict";
import { formatRecord, parseLevel } from "../../lib/log.ts";
import { parseLogFormat } from "../../lib/log_format.ts";

Deno.test("parseLevel() accepts level names and refuses others with a clear message", () => {
  assert.equal(parseLevel(undefined), "info");
  assert.equal(parseLevel("DEBUG"), "debug");
  assert.equal(parseLevel("warn"), "warning");
  assert.throws(() => parseLevel("loud"), /Cannot use log level "loud"/);
});

Deno.test("formatRecord() writes one line with category, message and properties", () => {
  const line = formatRecord({
    category: ["wgcni", "node"],
    level: "info",
    message: ["peer ", "abc", " added"],
    rawMessage: "peer {key} added",
    timestamp: Date.UTC(2026, 0, 2),
    properties: { peer: "abc", allowed: ["10.0.0.0/24"], why: "two words" },
  });
  assert.equal(
    line,
    '2026-01-02T00:00:00.000Z INFO wgcni.node: peer abc added peer=abc allowed=["10.0.0.0/24"] why="two words"\n',
  );
});

Deno.test("a field the message already shows is not repeated; json carries every field once", () => {
  const record = {
    category: ["wgcni", "cluster"],
    level: "info" as const,
    message: ["Registered node ", "node-a", ""],
    rawMessage: "Registered node {name}",
    timestamp: Date.UTC(2026, 0, 2),
    properties: { name: "node-a", subnets: ["10.244.1.0/24"], error: new Error("x y") },
  };
  assert.equal(
    formatRecord(record),
    '2026-01-02T00:00:00.000Z INFO wgcni.cluster: Registered node node-a subnets=["10.244.1.0/24"] error="x y"\n',
  );
  assert.equal(
    formatRecord(record, "text", { journal: true }),
    'INFO wgcni.cluster: Registered node node-a subnets=["10.244.1.0/24"] error="x y"\n',
    "the journal stamps lines itself",
  );
  assert.deepEqual(JSON.parse(formatRecord(record, "json")), {
    time: "2026-01-02T00:00:00.000Z",
    level: "info",
    logger: "wgcni.cluster",
    msg: "Registered node node-a",
    name: "node-a",
    subnets: ["10.244.1.0/24"],
    error: "x y",
  });
  assert.throws(() => parseLogFormat("xml"), /Cannot use log format "xml": expected text or json/);
});
