/**
 * Request counters and latency histograms of the cluster API, rendered with
 * the store's gauges in the Prometheus text format (version 0.0.4).
 */
import { Counter, type Family, Histogram, renderFamilies } from "../metrics.ts";

export type { Family as Gauge, Sample } from "../metrics.ts";

/** Counts and times requests per method, route pattern and status; counts refused credentials. */
export class RequestMetrics {
  readonly #requests = new Counter(
    "wgcni_cluster_requests_total",
    "API requests by method, route and status.",
  );
  readonly #latency = new Histogram(
    "wgcni_cluster_request_duration_seconds",
    "Time to answer an API request (to the first byte for watch streams).",
  );
  readonly #auth = new Counter(
    "wgcni_cluster_auth_failures_total",
    "Requests refused for their credential: missing or unknown (401), or not allowed there (403).",
  );

  /** Records one finished request. */
  observe(method: string, route: string, status: number, seconds: number): void {
    this.#requests.inc({ method, route, status });
    this.#latency.observe({ method, route }, seconds);
    if (status === 401 || status === 403) this.#auth.inc({ status });
  }

  /** The Prometheus text of `gauges` followed by these metrics. */
  render(gauges: readonly Family[]): string {
    return [
      ...renderFamilies(gauges),
      ...this.#requests.lines(),
      ...this.#latency.lines(),
      ...this.#auth.lines(),
    ].join("\n") + "\n";
  }
}
