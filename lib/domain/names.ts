/**
 * Node and client names, checked without the API schemas (the command line
 * checks them at every start, and loading the schemas costs more than the check).
 */

/** Longest node or client name (a DNS name). */
export const MAX_NAME_LENGTH = 253;

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Why `name` is not a valid node or client name, or undefined when it is: one
 * or more DNS labels (lowercase letters, digits, inner hyphens, 1–63
 * characters each) joined by dots, at most 253 characters.
 */
export function nameProblem(name: string): string | undefined {
  if (name === "") return "must not be empty";
  if (name.length > MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters`;
  if (name !== name.toLowerCase()) return "must be lowercase";
  for (const label of name.split(".")) {
    if (!LABEL.test(label)) {
      return `"${label}" is not a DNS label (a-z, 0-9 and inner "-", 1 to 63 characters)`;
    }
  }
  return undefined;
}
