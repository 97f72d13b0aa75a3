/** Secrets given to a command: from a flag or, better, from a file. */

/**
 * A secret from its flag or from the file its `-file` twin names (trimmed;
 * the file is how to keep it off the command line, where every user can read
 * it in /proc). Both given, an empty value or an unreadable file is a TypeError.
 */
import { readFailure } from "./fs.ts";
export function secretFrom(
  flag: string,
  value: string | undefined,
  file: string | undefined,
): string | undefined {
  if (value !== undefined && file !== undefined) {
    throw new TypeError(`Cannot use both ${flag} and ${flag}-file: give one`);
  }
  if (file === undefined) return value;
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (err) {
    const why = readFailure(err);
    throw new TypeError(`Cannot read ${flag}-file ${file}: ${why}`);
  }
  const secret = text.trim();
  if (secret === "") throw new TypeError(`Cannot use ${flag}-file ${file}: the file is empty`);
  return secret;
}
