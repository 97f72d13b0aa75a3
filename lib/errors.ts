/**
 * Named errors for conditions a caller handles. Bad shapes use the built-in
 * TypeError / RangeError / SyntaxError; these subclasses carry meaning that
 * the HTTP and CNI edges map to statuses and codes (see lib/api/errors.ts and
 * lib/cni/errors.ts).
 */

/** A pool (subnet pool, address range) has no free element left. */
export class PoolExhaustedError extends Error {
  override name = "PoolExhaustedError";
}

/** The thing asked for does not exist. */
export class NotFoundError extends Error {
  override name = "NotFoundError";
}

/** The request conflicts with existing state (a name bound to another key, an overlap). */
export class ConflictError extends Error {
  override name = "ConflictError";
}

/**
 * The store is behind what the caller already saw: it lost committed changes
 * (a backup put back, a replica's disk rolled back). Nothing is changed.
 */
export class StaleStoreError extends ConflictError {
  override name = "StaleStoreError";
}

/** The caller is not allowed to do this (bad or missing credential). */
export class AuthError extends Error {
  override name = "AuthError";
  /** true when no usable credential was presented at all (HTTP 401), false when it was wrong for this resource (403). */
  readonly missing: boolean;
  constructor(message: string, options: { missing?: boolean } = {}) {
    super(message);
    this.missing = options.missing ?? true;
  }
}

/** Stored state cannot be read or is inconsistent; serving would risk handing out addresses in use. */
export class StoreCorruptError extends Error {
  override name = "StoreCorruptError";
}

/** A request or value is larger than accepted (HTTP 413). */
export class TooLargeError extends Error {
  override name = "TooLargeError";
}

/** State cannot be written: its file system is full. Nothing of the failed write landed. */
export class NoSpaceError extends Error {
  override name = "NoSpaceError";
}

/**
 * A peer cannot be talked to the way it was configured (a certificate not
 * trusted or for another name, TLS on one side only): retrying does not help.
 */
export class TransportError extends Error {
  override name = "TransportError";
}

/** A dependency is temporarily unavailable; the caller may retry. */
export class UnavailableError extends Error {
  override name = "UnavailableError";
}
