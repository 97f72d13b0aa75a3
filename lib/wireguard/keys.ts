/**
 * WireGuard keys: Curve25519 key pairs from WebCrypto X25519, base64 of 32
 * bytes as `wg` writes them. Error messages never echo a key.
 */

const KEY_RE = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

/** True when `text` is a base64 WireGuard key (32 bytes). */
export function isKey(text: string): boolean {
  return KEY_RE.test(text);
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
