/** The shape of benchmark results and their markdown table. */

/** One measured figure, optionally next to a reference measured in the same run. */
export interface BenchRow {
  readonly bench: string;
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly reference?: string;
  readonly referenceValue?: number;
  readonly note?: string;
}

/** The p-th percentile of `xs` (nearest rank, rounding down); NaN when empty. */
export function pct(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const abs = Math.abs(n);
  if (abs >= 100) return n.toFixed(0);
  if (abs >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** A markdown table of rows; a ratio column (wgcni / reference) when any row has a reference. */
export function markdownTable(rows: readonly BenchRow[]): string {
  const withRef = rows.some((r) => r.referenceValue !== undefined);
  const head = withRef
    ? "| benchmark | figure | wgcni | reference | reference value | ratio | note |\n|---|---|---|---|---|---|---|"
    : "| benchmark | figure | value | note |\n|---|---|---|---|";
  const lines = rows.map((r) => {
    const v = `${fmt(r.value)} ${r.unit}`;
    if (!withRef) return `| ${r.bench} | ${r.name} | ${v} | ${r.note ?? ""} |`;
    const ref = r.referenceValue === undefined ? "" : `${fmt(r.referenceValue)} ${r.unit}`;
    const ratio = r.referenceValue ? fmt(r.value / r.referenceValue) + "×" : "";
    return `| ${r.bench} | ${r.name} | ${v} | ${r.reference ?? ""} | ${ref} | ${ratio} | ${
      r.note ?? ""
    } |`;
  });
  return [head, ...lines].join("\n");
}

/** Prints rows as a markdown table to stdout. */
export function printRows(rows: readonly BenchRow[]): void {
  Deno.stdout.writeSync(new TextEncoder().encode(markdownTable(rows) + "\n"));
}

/** Around the sections `bench/run.ts --emit` prints (for a run elsewhere, as in the kernel guest). */
export const EMIT_BEGIN = "<<<wgcni bench sections";
export const EMIT_END = "wgcni bench sections>>>";
