/** The one place address, prefix and endpoint syntax is decided (lib/domain/address.ts). */
import assert from "node:assert/strict";
import {
  addressFamily,
  byFamily,
  cidrFamily,
  hostPrefix,
  joinHostPort,
  parseHostPort,
  splitEndpoint,
  unmappedAddress,
} from "../../lib/domain/address.ts";

Deno.test("addressFamily() tells IPv4 from IPv6 and refuses the rest", () => {
  for (const a of ["192.0.2.1", "0.0.0.0", "255.255.255.255"]) assert.equal(addressFamily(a), 4, a);
  for (const a of ["::", "::1", "fd00:10:244::2", "2001:db8::ffff:192.0.2.1", "FD00::A"]) {
    assert.equal(addressFamily(a), 6, a);
  }
  for (
    const a of ["", "1.2.3", "1.2.3.256", "01.2.3.4", "fe80::1%eth0", "host", "1.2.3.4/32", ":::"]
  ) {
    assert.equal(addressFamily(a), undefined, a);
  }
});

Deno.test("cidrFamily() takes a prefix within the family's bits", () => {
  assert.equal(cidrFamily("10.0.0.0/8"), 4);
  assert.equal(cidrFamily("10.0.0.1/32"), 4);
  assert.equal(cidrFamily("::/0"), 6);
  assert.equal(cidrFamily("fd00::1/128"), 6);
  for (const c of ["10.0.0.0/33", "::/129", "10.0.0.0", "10.0.0.0/", "x/8", "10.0.0.0/-1"]) {
    assert.equal(cidrFamily(c), undefined, c);
  }
});

Deno.test("endpoints: IP:PORT and [IPv6]:PORT only, with the reason for anything else", () => {
  assert.deepEqual(parseHostPort("192.0.2.1:51820"), { host: "192.0.2.1", family: 4, port: 51820 });
  assert.deepEqual(parseHostPort("[2001:db8::1]:1"), { host: "2001:db8::1", family: 6, port: 1 });
  const refused: [string, RegExp][] = [
    ["2001:db8::1:51820", /not IP:PORT/],
    ["host:51820", /host names are not accepted/],
    ["1.2.3.256:1", /is not an IPv4 address/],
    ["[192.0.2.1]:1", /is not an IPv6 address/],
    ["192.0.2.1:0", /port 0 is not within/],
    ["192.0.2.1:65536", /port 65536/],
    ["[fe80::1%eth0]:1", /zone ids/],
    ["192.0.2.1", /not IP:PORT/],
  ];
  for (const [text, why] of refused) {
    assert.throws(
      () => parseHostPort(text),
      (e: unknown) => e instanceof RangeError && why.test(String(e)),
      text,
    );
    assert.equal(splitEndpoint(text), undefined, text);
  }
  assert.equal(joinHostPort("192.0.2.1", 7), "192.0.2.1:7");
  assert.equal(joinHostPort("fd00::1", 7), "[fd00::1]:7");
});

Deno.test("host prefixes and families of wgcni's own addresses", () => {
  assert.equal(hostPrefix("10.244.1.2"), "10.244.1.2/32");
  assert.equal(hostPrefix("fd00:10:244:1::2"), "fd00:10:244:1::2/128");
  assert.deepEqual(byFamily(["fd00::2", "10.0.0.2"]), ["10.0.0.2", "fd00::2"]);
  assert.deepEqual(byFamily(["fd00::2"]), [undefined, "fd00::2"]);
});

Deno.test("unmappedAddress() gives an IPv4-mapped IPv6 address as IPv4, others as they are", () => {
  assert.equal(unmappedAddress("::ffff:192.0.2.7"), "192.0.2.7");
  assert.equal(unmappedAddress("::FFFF:10.0.0.1"), "10.0.0.1");
  assert.equal(unmappedAddress("2001:db8::1"), "2001:db8::1");
  assert.equal(unmappedAddress("192.0.2.7"), "192.0.2.7");
});
