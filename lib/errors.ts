/**
 * Named errors for conditions a caller handles. Bad shapes use the built-in
 * TypeError / RangeError / SyntaxError; these subclasses carry meaning that
 * the HTTP and CNI edges map to statuses and codes (see lib/api/errors.ts and
 * lib/cni/errors.ts).
 */

/** The base of the classes below: an error named after its own class, as the edges report it. */
class NamedError extends Error {
  override name = this.constructor.name;
}

/** A pool (subnet pool, address range) has no free element left. */
export class PoolExhaustedError extends NamedError {}

/** The thing asked for does not exist. */
export class NotFoundError extends NamedError {}

/** The request conflicts with existing state (a name bound to another key, an overlap). */
export class ConflictError extends NamedError {}

/**
 * The store is behind what the caller already saw: it lost committed changes
 * (a backup put back, a replica's disk rolled back). Nothing is changed.
 */
export class StaleStoreError extends ConflictError {}

/** The caller is not allowed to do this (bad or missing credential). */
export class AuthError extends NamedError {
  /** true when no usable credential was presented at all (HTTP 401), false when it was wrong for this resource (403). */
  readonly missing: boolean;
  constructor(message: string, options: { missing?: boolean } = {}) {
    super(message);
    this.missing = options.missing ?? true;
  }
}

/** Stored state cannot be read or is inconsistent; serving would risk handing out addresses in use. */
export class StoreCorruptError extends NamedError {}

/** A request or value is larger than accepted (HTTP 413). */
export class TooLargeError extends NamedError {}

/** State cannot be written: its file system is full. Nothing of the failed write landed. */
export class NoSpaceError extends NamedError {}

/**
 * A peer cannot be talked to the way it was configured (a certificate not
 * trusted or for another name, TLS on one side only): retrying does not help.
 */
export class TransportError extends NamedError {}

/** A dependency is temporarily unavailable; the caller may retry. */
export class UnavailableError extends NamedError {}
