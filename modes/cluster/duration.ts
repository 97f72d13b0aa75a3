/** Durations as operators write them: `90s`, `30m`, `24h`, `7d`, `1h30m`. */

const UNIT_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Parses a duration into milliseconds; throws RangeError naming the accepted forms. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  if (!/^(\d+(ms|s|m|h|d|w))+$/.test(trimmed)) {
    throw new RangeError(
      `"${text}" is not a duration: write a number and a unit (ms, s, m, h, d, w), e.g. 30m, 24h, 1h30m`,
    );
  }
  let total = 0;
  for (const [, n = "0", unit = "s"] of trimmed.matchAll(/(\d+)(ms|s|m|h|d|w)/g)) {
    total += Number(n) * UNIT_MS[unit]!;
  }
  if (total <= 0 || !Number.isSafeInteger(total)) {
    throw new RangeError(`"${text}" is not a usable duration: it must be more than zero`);
  }
  return total;
}

/** Writes milliseconds the way {@linkcode parseDuration} reads them, largest units first. */
export function formatDuration(ms: number): string {
  if (ms <= 0) return "0s";
  let rest = Math.round(ms);
  let out = "";
  for (const unit of ["d", "h", "m", "s", "ms"]) {
    const size = UNIT_MS[unit]!;
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}
