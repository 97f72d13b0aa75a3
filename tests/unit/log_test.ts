import assert from "node:assert/strict";
import { formatRecord, parseLevel } from "../../lib/log.ts";

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
