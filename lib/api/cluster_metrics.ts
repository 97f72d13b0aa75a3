/**
 * Request counters and latency histograms of the cluster API, rendered with
 * the store's gauges in the Prometheus text format (version 0.0.4).
 */

/** Upper bounds of the latency histogram, in seconds. */
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const;

interface Histogram {
  readonly counts: number[];
  sum: number;
  count: number;
}

/** One gauge sample: labels and value. */
export interface Sample {
  readonly labels?: Readonly<Record<string, string | number>>;
  readonly value: number;
}

/** A gauge read at scrape time. */
export interface Gauge {
  readonly name: string;
  readonly help: string;
  readonly type?: "gauge" | "counter";
  readonly samples: readonly Sample[];
}

function labelText(labels: Readonly<Record<string, string | number>> | undefined): string {
  if (labels === undefined) return "";
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

/** Counts and times requests per method, route pattern and status. */
export class RequestMetrics {
  readonly #requests = new Map<string, number>();
  readonly #latency = new Map<string, Histogram>();

  /** Records one finished request. */
  observe(method: string, route: string, status: number, seconds: number): void {
    const reqKey = `${method}\u0000${route}\u0000${status}`;
    this.#requests.set(reqKey, (this.#requests.get(reqKey) ?? 0) + 1);
    const latKey = `${method}\u0000${route}`;
    let h = this.#latency.get(latKey);
    if (h === undefined) {
      h = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.#latency.set(latKey, h);
    }
    for (let i = 0; i < BUCKETS.length; i++) {
      if (seconds <= BUCKETS[i]!) h.counts[i]!++;
    }
    h.sum += seconds;
    h.count++;
  }

  /** The Prometheus text of these metrics followed by `gauges`. */
  render(gauges: readonly Gauge[]): string {
    const out: string[] = [];
    for (const g of gauges) {
      out.push(`# HELP ${g.name} ${g.help}`, `# TYPE ${g.name} ${g.type ?? "gauge"}`);
      for (const s of g.samples) out.push(`${g.name}${labelText(s.labels)} ${s.value}`);
    }
    out.push(
      "# HELP wgcni_cluster_requests_total API requests by method, route and status.",
      "# TYPE wgcni_cluster_requests_total counter",
    );
    for (const [key, n] of this.#requests) {
      const [method = "", route = "", status = ""] = key.split("\u0000");
      out.push(`wgcni_cluster_requests_total${labelText({ method, route, status })} ${n}`);
    }
    const name = "wgcni_cluster_request_duration_seconds";
    out.push(
      `# HELP ${name} Time to answer an API request (to the first byte for watch streams).`,
      `# TYPE ${name} histogram`,
    );
    for (const [key, h] of this.#latency) {
      const [method = "", route = ""] = key.split("\u0000");
      BUCKETS.forEach((le, i) => {
        out.push(`${name}_bucket${labelText({ method, route, le })} ${h.counts[i]}`);
      });
      out.push(`${name}_bucket${labelText({ method, route, le: "+Inf" })} ${h.count}`);
      out.push(`${name}_sum${labelText({ method, route })} ${h.sum}`);
      out.push(`${name}_count${labelText({ method, route })} ${h.count}`);
    }
    return out.join("\n") + "\n";
  }
}
