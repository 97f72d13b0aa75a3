import assert from "node:assert/strict";
import {
  cidrSize,
  contains,
  firstHost,
  formatAddress,
  formatCidr,
  hostCidr,
  overlaps,
  parseAddress,
  parseCidr,
} from "../../lib/ipam/mod.ts";

Deno.test("parseCidr() and formatCidr() round-trip in canonical form", () => {
  const cases: [string, string, bigint][] = [
    ["10.244.0.0/16", "10.244.0.0/16", 65536n],
    ["0.0.0.0/0", "0.0.0.0/0", 2n ** 32n],
    ["192.0.2.7/32", "192.0.2.7/32", 1n],
    ["fd00:10:244::/56", "fd00:10:244::/56", 2n ** 72n],
    ["FD00:0010:0244:0000:0000:0000:0000:0000/64", "fd00:10:244::/64", 2n ** 64n],
    ["2001:db8:0:0:1:0:0:0/80", "2001:db8:0:0:1::/80", 2n ** 48n],
    ["::/0", "::/0", 2n ** 128n],
  ];
  for (const [text, canonical, size] of cases) {
    const c = parseCidr(text);
    assert.equal(formatCidr(c), canonical);
    assert.equal(cidrSize(c), size);
  }
});

Deno.test("parseCidr() refuses bad input with a message that says why", () => {
  const cases: [string, RegExp][] = [
    ["10.244.0.1/24", /host bits are set/],
    ["10.244.0.0/33", /prefix length 33 exceeds 32/],
    ["fd00::/129", /exceeds 128/],
    ["10.244.0.0", /expected ADDRESS\/PREFIX/],
    ["10.244/16", /not an address/],
    ["256.0.0.0/8", /not an address/],
    ["fe80::1%eth0/64", /not an address/],
    ["", /expected ADDRESS\/PREFIX/],
    ["x/8", /not an address/],
  ];
  for (const [text, re] of cases) assert.throws(() => parseCidr(text), re, text);
});

Deno.test("formatAddress() writes IPv6 per RFC 5952", () => {
  const cases: [string, string][] = [
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["::ffff:0:0", "::ffff:0:0"],
    ["0:0:0:0:0:0:0:0", "::"],
  ];
  for (const [input, want] of cases) {
    const a = parseAddress(input);
    assert.equal(formatAddress(a.family, a.value), want);
  }
  assert.equal(formatAddress(4, 0x0af40001n), "10.244.0.1");
  assert.throws(() => formatAddress(4, 2n ** 32n), RangeError);
});

Deno.test("contains() and overlaps() compare ranges of one family", () => {
  const pool = parseCidr("10.244.0.0/16");
  assert.ok(contains(pool, parseCidr("10.244.3.0/24")));
  assert.ok(contains(pool, parseAddress("10.244.255.255")));
  assert.ok(!contains(pool, parseCidr("10.0.0.0/8")));
  assert.ok(!contains(pool, parseAddress("10.245.0.0")));
  assert.ok(!contains(parseCidr("::/0"), parseAddress("10.244.0.1")));
  assert.ok(overlaps(parseCidr("10.244.0.0/16"), parseCidr("10.0.0.0/8")));
  assert.ok(overlaps(parseCidr("10.244.1.0/25"), parseCidr("10.244.1.64/26")));
  assert.ok(!overlaps(parseCidr("10.244.1.0/25"), parseCidr("10.244.1.128/25")));
  assert.ok(!overlaps(parseCidr("0.0.0.0/0"), parseCidr("::/0")));
  assert.equal(hostCidr(6, parseAddress("fd00::2").value), "fd00::2/128");
  assert.equal(formatAddress(4, firstHost(parseCidr("10.244.3.0/24"))), "10.244.3.1");
  assert.equal(formatAddress(4, firstHost(parseCidr("10.244.3.4/31"))), "10.244.3.4");
});
