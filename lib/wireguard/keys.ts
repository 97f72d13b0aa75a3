/**
 * WireGuard keys: Curve25519 key pairs from WebCrypto X25519, base64 of 32
 * bytes as `wg` writes them. Error messages never echo a key.
 */

const KEY_RE = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

/** True when `text` is a base64 WireGuard key (32 bytes). */
export function isKey(text: string): boolean {
  return KEY_RE.test(text);
}

/** p = 2^255 - 19, the field of Curve25519. */
const P = (1n << 255n) - 19n;

/**
 * The u-coordinates (mod p) of Curve25519's points of small order: 0, 1,
 * p - 1 and the two of order 8. A Diffie-Hellman with any of them gives a
 * result an attacker knows in advance.
 */
const LOW_ORDER = new Set<bigint>([
  0n,
  1n,
  P - 1n,
  0x00b8495f16056286fdb1329ceb8d09da6ac49ff1fae35616aeb8413b7c7aebe0n,
  0x57119fd0dd4e22d8868e1c58c45c44045bef839c55b1d0b1248c50a3bc959c5fn,
]);

/**
 * True when a base64 key is a low-order point, in any of its encodings (the
 * top bit is ignored and values at or above p wrap around, as X25519 does).
 */
export function isLowOrderKey(text: string): boolean {
  const bytes = fromBase64(text);
  let u = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) u = (u << 8n) | BigInt(bytes[i]!);
  u &= (1n << 255n) - 1n;
  return LOW_ORDER.has(u % P);
}

/** Validates a key and returns it; throws a TypeError naming only `what`. */
export function parseKey(text: unknown, what = "key"): string {
  if (typeof text !== "string") throw new TypeError(`Cannot use ${what}: expected a string`);
  const t = text.trim();
  if (!isKey(t)) {
    throw new TypeError(`Cannot use ${what}: expected base64 of 32 bytes (44 characters)`);
  }
  return t;
}

function toBase64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** PKCS#8 wrapping of a raw X25519 private key (RFC 8410). */
const PKCS8_PREFIX = new Uint8Array([
  0x30,
  0x2e,
  0x02,
  0x01,
  0x00,
  0x30,
  0x05,
  0x06,
  0x03,
  0x2b,
  0x65,
  0x6e,
  0x04,
  0x22,
  0x04,
  0x20,
]);

/** The X25519 base point u = 9. */
const BASE_POINT = new Uint8Array(32);
BASE_POINT[0] = 9;

/** A new key pair; the private key is clamped as `wg genkey` does. */
export async function generateKeyPair(): Promise<{ privateKey: string; publicKey: string }> {
  const raw = crypto.getRandomValues(new Uint8Array(32));
  raw[0] = (raw[0] as number) & 248;
  raw[31] = ((raw[31] as number) & 127) | 64;
  const privateKey = toBase64(raw);
  raw.fill(0);
  return { privateKey, publicKey: await publicKeyOf(privateKey) };
}

/** The public key of a private key (what `wg pubkey` prints). */
export async function publicKeyOf(privateKey: string): Promise<string> {
  const raw = fromBase64(parseKey(privateKey, "private key"));
  const pkcs8 = new Uint8Array(PKCS8_PREFIX.length + 32);
  pkcs8.set(PKCS8_PREFIX);
  pkcs8.set(raw, PKCS8_PREFIX.length);
  raw.fill(0);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, false, [
    "deriveBits",
  ]);
  pkcs8.fill(0);
  const base = await crypto.subtle.importKey("raw", BASE_POINT, { name: "X25519" }, false, []);
  const bits = await crypto.subtle.deriveBits({ name: "X25519", public: base }, key, 256);
  return toBase64(new Uint8Array(bits));
}
