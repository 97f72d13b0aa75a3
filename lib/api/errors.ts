/**
 * The one table between wgcni's named errors and HTTP statuses, used both
 * ways: the server answers `{ error, code }` with the status of the error it
 * caught, and the typed client turns such an answer back into the same class.
 */
import {
  AuthError,
  ConflictError,
  NotFoundError,
  PoolExhaustedError,
  StaleStoreError,
  StoreCorruptError,
  TooLargeError,
  UnavailableError,
} from "../errors.ts";

/** The body of every non-2xx answer of the cluster API. */
export interface ErrorBody {
  readonly error: string;
  /** The name of the error class on the server (e.g. "ConflictError"); absent for framework errors. */
  readonly code?: string;
}

/** HTTP status of an error the server caught; 500 for anything unexpected. */
export function statusOf(err: unknown): 400 | 401 | 403 | 404 | 409 | 413 | 500 | 503 {
  if (err instanceof AuthError) return err.missing ? 401 : 403;
  if (err instanceof NotFoundError) return 404;
  if (err instanceof ConflictError) return 409;
  if (err instanceof TooLargeError) return 413;
  if (err instanceof PoolExhaustedError) return 503;
  if (err instanceof UnavailableError) return 503;
  if (err instanceof StoreCorruptError) return 503;
  if (err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError) {
    return 400;
  }
  return 500;
}

/** The class name the client uses to rebuild the error, for the errors the table knows. */
export function codeOf(err: unknown): string | undefined {
  const known = [
    AuthError,
    NotFoundError,
    // Before ConflictError, which it extends.
    StaleStoreError,
    ConflictError,
    PoolExhaustedError,
    UnavailableError,
    StoreCorruptError,
    TooLargeError,
    TypeError,
    RangeError,
    SyntaxError,
  ];
  for (const cls of known) if (err instanceof cls) return cls.name;
  return undefined;
}

/**
 * Rebuilds the error an API answer describes: the class named by `code` when
 * known, otherwise the class the status stands for (400 → TypeError, 401/403 →
 * AuthError, 404 → NotFoundError, 409 → ConflictError, 503 → UnavailableError).
 */
export function errorFromResponse(status: number, body: Partial<ErrorBody> | undefined): Error {
  const message = typeof body?.error === "string" && body.error !== ""
    ? body.error
    : `the cluster API answered HTTP ${status}`;
  switch (body?.code) {
    case "AuthError":
      return new AuthError(message, { missing: status === 401 });
    case "NotFoundError":
      return new NotFoundError(message);
    case "ConflictError":
      return new ConflictError(message);
    case "StaleStoreError":
      return new StaleStoreError(message);
    case "PoolExhaustedError":
      return new PoolExhaustedError(message);
    case "UnavailableError":
      return new UnavailableError(message);
    case "StoreCorruptError":
      return new StoreCorruptError(message);
    case "TooLargeError":
      return new TooLargeError(message);
    case "RangeError":
      return new RangeError(message);
    case "SyntaxError":
      return new SyntaxError(message);
    case "TypeError":
      return new TypeError(message);
  }
  if (status === 401 || status === 403) return new AuthError(message, { missing: status === 401 });
  if (status === 404) return new NotFoundError(message);
  if (status === 409) return new ConflictError(message);
  if (status === 413) return new TooLargeError(message);
  if (status === 503 || status === 502 || status === 504) return new UnavailableError(message);
  if (status >= 400 && status < 500) return new TypeError(message);
  return new Error(message);
}
