/**
 * The Prometheus text format (version 0.0.4) for both daemons: families of
 * gauges and counters read at scrape time, and counters and histograms kept
 * between scrapes.
 */

/** One sample: labels and value. */
export interface Sample {
  readonly labels?: Readonly<Record<string, string | number>>;
  readonly value: number;
}

/** A family of samples read at scrape time. */
export interface Family {
  readonly name: string;
  readonly help: string;
  readonly type?: "gauge" | "counter";
  readonly samples: readonly Sample[];
}

/** A family of one sample without labels. */
export function scalar(family: Omit<Family, "samples">, value: number): Family {
  return { ...family, samples: [{ value }] };
}

/** Upper bounds of latency histograms, in seconds. */
export const LATENCY_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
] as const;

export function labelText(labels: Readonly<Record<string, string | number>> | undefined): string {
  if (labels === undefined) return "";
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

/** The text of families read at scrape time. */
export function renderFamilies(families: readonly Family[]): string[] {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type ?? "gauge"}`);
    for (const s of f.samples) out.push(`${f.name}${labelText(s.labels)} ${s.value}`);
  }
  return out;
}

type Labels = Readonly<Record<string, string | number>>;

/** A counter with labels, kept between scrapes. */
export class Counter {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, n = 1): void {
    const key = JSON.stringify(labels);
    const c = this.#values.get(key);
    if (c === undefined) this.#values.set(key, { labels, value: n });
    else c.value += n;
  }

  lines(): string[] {
    return renderFamilies([{
      name: this.name,
      help: this.help,
      type: "counter",
      samples: [...this.#values.values()].map((v) => ({ labels: v.labels, value: v.value })),
    }]);
  }
}

/** A histogram with labels, kept between scrapes. */
export class Histogram {
  readonly #series = new Map<
    string,
    { labels: Labels; counts: number[]; sum: number; n: number }
  >();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: readonly number[] = LATENCY_BUCKETS,
  ) {}

  observe(labels: Labels, value: number): void {
    const key = JSON.stringify(labels);
    let s = this.#series.get(key);
    if (s === undefined) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, n: 0 };
      this.#series.set(key, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.n++;
  }

  lines(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.#series.values()) {
      this.buckets.forEach((le, i) => {
        out.push(`${this.name}_bucket${labelText({ ...s.labels, le })} ${s.counts[i]}`);
      });
      out.push(`${this.name}_bucket${labelText({ ...s.labels, le: "+Inf" })} ${s.n}`);
      out.push(`${this.name}_sum${labelText(s.labels)} ${s.sum}`);
      out.push(`${this.name}_count${labelText(s.labels)} ${s.n}`);
    }
    return out;
  }
}

/** `wgcni_build_info`: which wgcni and Deno a daemon runs. */
export function buildInfo(version: string): Family {
  return {
    name: "wgcni_build_info",
    help: "The wgcni and Deno versions of this process (always 1).",
    samples: [{ labels: { version, deno: Deno.version.deno }, value: 1 }],
  };
}
