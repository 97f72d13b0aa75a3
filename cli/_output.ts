/** Command output for the CLI: results to stdout, messages to stderr. */
const encoder = new TextEncoder();

/** Writes a line to stdout. */
export function say(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text.endsWith("\n") ? text : text + "\n"));
}

/** Writes a line to stderr. */
export function warn(text: string): void {
  Deno.stderr.writeSync(encoder.encode(text.endsWith("\n") ? text : text + "\n"));
}

/** Thrown by an action to end with a given exit code after it printed its own message. */
export class ExitError extends Error {
  override name = "ExitError";
  readonly exitCode: number;
  constructor(exitCode: number, message = `exit ${exitCode}`) {
    super(message);
    this.exitCode = exitCode;
  }
}

/** Fails a command that is not built yet, saying so plainly. */
export function notYet(what: string): never {
  warn(`wgcni: ${what} is not implemented yet in this version`);
  throw new ExitError(1);
}
