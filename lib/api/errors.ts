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

type Status = 400 | 401 | 403 | 404 | 409 | 413 | 500 | 503;

/**
 * The errors the API carries by name, each with its status (an AuthError's
 * is 401 or 403, see {@linkcode statusOf}). A subclass stands before the
 * class it extends, so that its own name is the code.
 */
const KNOWN: readonly (readonly [new (message: string) => Error, Status])[] = [
  [AuthError, 401],
  [NotFoundError, 404],
  [StaleStoreError, 409],
  [ConflictError, 409],
  [PoolExhaustedError, 503],
  [UnavailableError, 503],
  [StoreCorruptError, 503],
  [TooLargeError, 413],
  [TypeError, 400],
  [RangeError, 400],
  [SyntaxError, 400],
];

/** HTTP status of an error the server caught; 500 for anything unexpected. */
export function statusOf(err: unknown): Status {
  if (err instanceof AuthError) return err.missing ? 401 : 403;
  return KNOWN.find(([cls]) => err instanceof cls)?.[1] ?? 500;
}

/** The class name the client uses to rebuild the error, for the errors the table knows. */
export function codeOf(err: unknown): string | undefined {
  return KNOWN.find(([cls]) => err instanceof cls)?.[0].name;
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
  const named = KNOWN.find(([cls]) => cls.name === body?.code)?.[0];
  if (named === AuthError || (named === undefined && (status === 401 || status === 403))) {
    return new AuthError(message, { missing: status === 401 });
  }
  if (named !== undefined) return new named(message);
  if (status === 404) return new NotFoundError(message);
  if (status === 409) return new ConflictError(message);
  if (status === 413) return new TooLargeError(message);
  if (status === 503 || status === 502 || status === 504) return new UnavailableError(message);
  if (status >= 400 && status < 500) return new TypeError(message);
  return new Error(message);
}
