// Counts for /metrics (Prometheus text format) and the "usually takes" estimate
// on the page, both fed by the committed changes. Every per-lock series has a
// `lock` label; the root's block is `releasestatus_blocked{lock=""}`.
import { freezeOn } from "./calendar.ts";
import { type Heard, isKnown, type Snapshot, waiting } from "./engine.ts";
import { freezeWindows } from "./freezes.ts";
import { webhookStatuses } from "./notify/deliver.ts";
import { DEFAULT_LOCK, type Event, type Outcome, type Reason, type Release, ROOT } from "./release.ts";
import { iso } from "./words.ts";

/** Every reason a /start can be refused for: each is exported at zero for every lock, so rates work at once. */
export const START_REFUSALS: Reason[] = [
  "running",
  "blocked",
  "frozen",
  "queued",
  "timeout",
  "invalid",
  "unauthorized",
  "forbidden",
  "too-large",
  "unsupported-media-type",
  "unknown-lock",
  "storage",
  "shutting-down",
];
// Seconds: from a few seconds (so that short releases are not read as half a minute) to half a day.
const BUCKETS = [1, 5, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 14400, 43200];
const RECENT = 20; // completed releases the estimate looks at

type LockCounts = { started: number; refused: Record<string, number>; buckets: number[]; count: number; sum: number };

export const metrics = {
  byLock: new Map<string, LockCounts>(),
  recent: [] as number[], // seconds, oldest first
};

function counts(lock: string): LockCounts {
  let c = metrics.byLock.get(lock);
  if (!c) {
    c = {
      started: 0,
      refused: Object.fromEntries(START_REFUSALS.map((r) => [r, 0])),
      buckets: BUCKETS.map(() => 0),
      count: 0,
      sum: 0,
    };
    metrics.byLock.set(lock, c);
  }
  return c;
}

export function countStart(lock: string, o: Outcome): void {
  // Only locks that exist get series of their own: refused starts on ever new names must not grow the metrics.
  if (!o.ok && lock !== DEFAULT_LOCK && !isKnown(lock)) return;
  const c = counts(lock);
  if (o.ok) c.started++;
  else c.refused[o.reason] = (c.refused[o.reason] ?? 0) + 1;
}

/** A commit listener: every release that ended adds its length to its lock's histogram and to the estimate. */
export function observe({ events, before }: Heard): void {
  if (!before) return;
  const releases = [...before.releases, ...before.around.flatMap((n) => n.releases)];
  for (const e of events) {
    if (e.kind !== "stopped" && e.kind !== "expired" && e.kind !== "abandoned") continue;
    const ended = releases.find((r) => r?.id === e.releaseId);
    if (ended) addDuration(e.lock, (e.at - ended.startedAt) / 1000);
  }
}

function addDuration(lock: string, seconds: number) {
  const c = counts(lock);
  BUCKETS.forEach((le, i) => {
    if (seconds <= le) c.buckets[i] = (c.buckets[i] ?? 0) + 1;
  });
  c.count++;
  c.sum += seconds;
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

const label = (lock: string) => `lock="${lock.replace(/["\\]/g, "\\$&")}"`;

/** The metrics, the locks' series from one snapshot (see engine.ts `snapshot`). */
export function renderMetrics(healthy: boolean, snap: Snapshot): string {
  const frozenLocks = freezeWindows().flatMap((w) => w.locks ?? []); // a freeze's lock is worth a series before it is used
  const names = [
    ...new Set([...snap.locks().filter((l) => l !== ROOT), ...metrics.byLock.keys(), ...frozenLocks, "default"]),
  ].sort();
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, lines: string[]) =>
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
  const perLock = (name: string, help: string, value: (lock: string) => number, withRoot = false) =>
    metric(
      name,
      "gauge",
      help,
      (withRoot ? [ROOT, ...names] : names).map((l) => `${name}{${label(l)}} ${value(l)}`),
    );
  const line = waiting();

  perLock(
    "releasestatus_running",
    "How many releases hold the lock: 0 or 1, up to its limit for a lock declared with one.",
    (l) => snap.state(l).releases.length,
  );
  perLock(
    "releasestatus_limit",
    "How many releases may hold the lock at once ([[lock]] limit; 1 unless declared).",
    (l) => snap.state(l).limit,
  );
  perLock(
    "releasestatus_blocked",
    'Whether the lock itself is blocked (1) or not (0); lock="" is the root, whose block blocks every lock.',
    (l) => (snap.state(l).block ? 1 : 0),
    true,
  );
  perLock(
    "releasestatus_release_started_timestamp_seconds",
    "When the running release started, in seconds since the epoch; 0 when none runs.",
    (l) => (snap.state(l).release?.startedAt ?? 0) / 1000,
  );
  perLock(
    "releasestatus_release_expires_timestamp_seconds",
    "When the running release's lease ends, in seconds since the epoch; 0 when none runs or it has no lease.",
    (l) => (snap.state(l).release?.expiresAt ?? 0) / 1000,
  );
  perLock(
    "releasestatus_waiting",
    "Starts waiting in line for the lock.",
    (l) => line.filter((w) => w.lock === l).length,
  );
  const now = Date.now();
  perLock(
    "releasestatus_frozen",
    "Whether a freeze window of the calendar is in force on the lock (1) or not (0).",
    (l) => (freezeOn(freezeWindows(), l, now) ? 1 : 0),
  );
  const hooks = webhookStatuses();
  if (hooks.length) {
    metric(
      "releasestatus_webhook_deliveries_total",
      "counter",
      "Webhook deliveries since start: delivered (2xx), failed (an attempt to be tried again), dropped (given up).",
      hooks.flatMap((w) =>
        (["delivered", "failed", "dropped"] as const).map(
          (r) =>
            `releasestatus_webhook_deliveries_total{webhook=${JSON.stringify(w.label)},result="${r}"} ${w.deliveries[r]}`,
        ),
      ),
    );
    metric(
      "releasestatus_webhook_backlog",
      "gauge",
      "Events a webhook has yet to be sent (or skip), as of its last look.",
      hooks.map((w) => `releasestatus_webhook_backlog{webhook=${JSON.stringify(w.label)}} ${w.backlog}`),
    );
  }
  metric("releasestatus_last_release_id", "gauge", "The highest release id granted so far, on any lock.", [
    `releasestatus_last_release_id ${snap.state(ROOT).lastId}`,
  ]);
  metric("releasestatus_storage_healthy", "gauge", "Whether the last write to storage succeeded (1) or failed (0).", [
    `releasestatus_storage_healthy ${healthy ? 1 : 0}`,
  ]);
  metric(
    "releasestatus_releases_started_total",
    "counter",
    "Releases started since the daemon started.",
    names.map((l) => `releasestatus_releases_started_total{${label(l)}} ${counts(l).started}`),
  );
  metric(
    "releasestatus_start_refused_total",
    "counter",
    "Starts refused since the daemon started, by lock and reason.",
    names.flatMap((l) =>
      Object.entries(counts(l).refused).map(
        ([r, n]) => `releasestatus_start_refused_total{${label(l)},reason="${r}"} ${n}`,
      ),
    ),
  );
  const h = "releasestatus_release_duration_seconds";
  metric(
    h,
    "histogram",
    "How long completed releases ran, from start to stop or expiry.",
    names.flatMap((l) => {
      const c = counts(l);
      return [
        ...BUCKETS.map((le, i) => `${h}_bucket{${label(l)},le="${le}"} ${c.buckets[i]}`),
        `${h}_bucket{${label(l)},le="+Inf"} ${c.count}`,
        `${h}_sum{${label(l)}} ${c.sum}`,
        `${h}_count{${label(l)}} ${c.count}`,
      ];
    }),
  );
  return `${out.join("\n")}\n`;
}
