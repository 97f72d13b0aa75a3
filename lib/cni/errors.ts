/** Errors the local API returns as CNI error bodies. */

/** CNI error codes the node manager uses (1-99 are the spec's; 100+ wgcni's). */
export const ERR = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnv: 4,
  io: 5,
  decoding: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  statusCantAdd: 50,
  statusDegraded: 51,
  internal: 100,
  poolExhausted: 101,
} as const;

/** An error with a CNI code and optional details. */
export class CniError extends Error {
  override name = "CniError";
  readonly code: number;
  readonly details: string | undefined;
  constructor(code: number, message: string, details?: string) {
    super(message);
    this.code = code;
    this.details = details;
  }
}
