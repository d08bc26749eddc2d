// Counts for /metrics (Prometheus text format) and the "usually takes" estimate
// on the page, both fed by the committed changes.
import type { Committed } from "./engine.ts";
import { blockOn, type Event, iso, type Outcome, type Reason, type Release, type State } from "./release.ts";

/** Every reason a /start can be refused for: each is exported from start-up at zero, so rates work at once. */
export const START_REFUSALS: Reason[] = [
  "running",
  "blocked",
  "queued",
  "timeout",
  "invalid",
  "unauthorized",
  "forbidden",
  "too-large",
  "storage",
  "shutting-down",
];
const BUCKETS = [60, 300, 600, 900, 1800, 3600, 7200, 14400, 43200]; // seconds: one minute to half a day
const RECENT = 20; // completed releases the estimate looks at

export const metrics = {
  started: 0,
  refused: Object.fromEntries(START_REFUSALS.map((r) => [r, 0])) as Record<string, number>,
  buckets: BUCKETS.map(() => 0),
  durationCount: 0,
  durationSum: 0,
  recent: [] as number[], // seconds, oldest first
};

export function countStart(o: Outcome): void {
  if (o.ok) metrics.started++;
  else metrics.refused[o.reason] = (metrics.refused[o.reason] ?? 0) + 1;
}

/** A commit listener: every release that ended adds its length to the histogram and the estimate. */
export function observe({ events, before }: Committed): void {
  if (!before) return;
  const releases = [before.release, ...before.around.map((n) => n.release)];
  for (const e of events) {
    if (e.kind !== "stopped" && e.kind !== "expired" && e.kind !== "abandoned") continue;
    const ended = releases.find((r) => r?.id === e.releaseId);
    if (ended) addDuration((e.at - ended.startedAt) / 1000);
  }
}

function addDuration(seconds: number) {
  BUCKETS.forEach((le, i) => {
    if (seconds <= le) metrics.buckets[i] = (metrics.buckets[i] ?? 0) + 1;
  });
  metrics.durationCount++;
  metrics.durationSum += seconds;
  remember(seconds);
}

function remember(seconds: number) {
  metrics.recent.push(seconds);
  if (metrics.recent.length > RECENT) metrics.recent.shift();
}

/** At start-up: the estimate learns from releases that completed before the restart (the histogram does not). */
export function learnFromHistory(newestFirst: Event[]): void {
  const startedAt = new Map<number, number>();
  for (const e of [...newestFirst].reverse()) {
    if (e.releaseId === null) continue;
    if (e.kind === "started") startedAt.set(e.releaseId, e.at);
    const began = startedAt.get(e.releaseId);
    if ((e.kind === "stopped" || e.kind === "expired") && began !== undefined) remember((e.at - began) / 1000);
  }
}

/** "Usually takes 24 min; expected around 14:32": the median of recent completed releases. */
export function estimate(release: Release | null): { typicalSeconds: number; expectedAt: string } | null {
  if (!release || metrics.recent.length === 0) return null;
  const sorted = [...metrics.recent].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
  return { typicalSeconds: Math.round(median), expectedAt: iso(release.startedAt + median * 1000) };
}

export function renderMetrics(s: State, waiting: number, healthy: boolean): string {
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, lines: string[]) =>
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
  const gauge = (name: string, help: string, value: number) => metric(name, "gauge", help, [`${name} ${value}`]);

  gauge("releasestatus_running", "Whether a release is running (1) or not (0).", s.release ? 1 : 0);
  gauge("releasestatus_blocked", "Whether releasing is blocked (1) or not (0).", blockOn(s) ? 1 : 0);
  gauge(
    "releasestatus_release_started_timestamp_seconds",
    "When the running release started, in seconds since the epoch; 0 when none runs.",
    s.release ? s.release.startedAt / 1000 : 0,
  );
  gauge(
    "releasestatus_release_expires_timestamp_seconds",
    "When the running release's lease ends, in seconds since the epoch; 0 when none runs or it has no lease.",
    s.release?.expiresAt ? s.release.expiresAt / 1000 : 0,
  );
  gauge("releasestatus_last_release_id", "The highest release id granted so far.", s.lastId);
  gauge("releasestatus_waiting", "Starts waiting in line for the release.", waiting);
  gauge(
    "releasestatus_storage_healthy",
    "Whether the last write to storage succeeded (1) or failed (0).",
    healthy ? 1 : 0,
  );
  metric("releasestatus_releases_started_total", "counter", "Releases started since the daemon started.", [
    `releasestatus_releases_started_total ${metrics.started}`,
  ]);
  metric(
    "releasestatus_start_refused_total",
    "counter",
    "Starts refused since the daemon started, by reason.",
    Object.entries(metrics.refused).map(([r, n]) => `releasestatus_start_refused_total{reason="${r}"} ${n}`),
  );
  const h = "releasestatus_release_duration_seconds";
  metric(h, "histogram", "How long completed releases ran, from start to stop or expiry.", [
    ...BUCKETS.map((le, i) => `${h}_bucket{le="${le}"} ${metrics.buckets[i]}`),
    `${h}_bucket{le="+Inf"} ${metrics.durationCount}`,
    `${h}_sum ${metrics.durationSum}`,
    `${h}_count ${metrics.durationCount}`,
  ]);
  return `${out.join("\n")}\n`;
}
