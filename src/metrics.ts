// Counts for /metrics (Prometheus text format) and the "usually takes" estimate
// on the page, both fed by the committed changes and by every answer to a start.
// Every per-lock series has a `lock` label; the root's block is
// `releasestatus_blocked{lock="/"}`, and refused starts on a name with no series of
// its own are counted on `lock="(other)"`, so that none is missed and random names
// cannot grow the metrics.
import { readdirSync, readFileSync } from "node:fs";
import pkg from "../package.json" with { type: "json" };
import { freezeOn } from "./calendar.ts";
import type { Config } from "./config.ts";
import { type Heard, isKnown, type Snapshot, waiting } from "./engine.ts";
import { freezeWindows, windowsOver } from "./freezes.ts";
import { validLockName } from "./names.ts";
import { webhookStatuses } from "./notify/deliver.ts";
import { DEFAULT_LOCK, type Event, type Reason, type Release, ROOT } from "./release.ts";
import { iso } from "./words.ts";

/**
 * Every reason a /start can be refused for. `superseded` and `stale` only on a lock whose [[lock]] says
 * queue = "newest": a waiter a newer version of its claim passed, and a start older than the last released.
 */
export const START_REFUSALS: Reason[] = [
  "running",
  "full",
  "superseded",
  "stale",
  "blocked",
  "frozen",
  "queued",
  "timeout",
  "invalid",
  "unauthorized",
  "issuer-unreachable",
  "forbidden",
  "too-large",
  "unsupported-media-type",
  "unknown-lock",
  "storage",
  "shutting-down",
];
/** The label of refused starts on a name with no series of its own: never a lock name, which has no parentheses. */
export const OTHER = "(other)";
/** The root's label: "" would fold into "no label" in `sum by (lock)`. */
const ROOT_LABEL = "/";
/** What the counts need of the configuration: which locks exist, whether tokens are asked for. */
export type Setup = Pick<Config, "locks" | "access" | "declared">;

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

/**
 * One answer to a start, as the HTTP layer gave it: started (reason null) or refused with a reason. A refusal is
 * counted on the lock asked for when that lock has series (see seriesLocks), else on OTHER.
 */
export function countStart(lock: string, reason: Reason | null, setup: Setup): void {
  if (reason === null) {
    counts(lock).started++;
    return;
  }
  const c = counts(hasSeries(lock, setup) ? lock : OTHER);
  c.refused[reason] = (c.refused[reason] ?? 0) + 1;
}

// With RS_LOCKS, exactly its names; else names in use, used before, or named by the configuration.
function hasSeries(lock: string, setup: Setup): boolean {
  if (!validLockName(lock)) return false;
  if (setup.locks) return setup.locks.includes(lock);
  return lock === DEFAULT_LOCK || metrics.byLock.has(lock) || isKnown(lock) || configured(setup).includes(lock);
}

// The locks a team's configuration names: its [[lock]] tables, its tokens' scopes and its freeze windows.
function configured(setup: Setup): string[] {
  const scoped = [...setup.access.tokens.values()].flatMap((t) => (t.locks === "*" ? [] : t.locks));
  return [...setup.declared.map((d) => d.name), ...scoped, ...freezeWindows().flatMap((w) => w.locks ?? [])];
}

/** The locks with series of their own (the root aside): with RS_LOCKS, its names; else every lock that has one. */
function seriesLocks(snap: Snapshot, setup: Setup): string[] {
  if (setup.locks) return [...setup.locks].sort();
  const names = [...snap.locks(), ...metrics.byLock.keys(), ...configured(setup), DEFAULT_LOCK];
  return [...new Set(names.filter((l) => l !== ROOT && l !== OTHER))].sort();
}

/** The reasons a start on `lock` can be refused for with this configuration: only these are exported at zero. */
function possibleRefusals(lock: string, setup: Setup): Reason[] {
  const tokens = setup.access.tokens.size > 0 || setup.access.trust.length > 0;
  const frozen = lock === OTHER ? !setup.locks && freezeWindows().length > 0 : windowsOver(lock).length > 0;
  return START_REFUSALS.filter((r) => {
    if (r === "unauthorized") return tokens;
    if (r === "issuer-unreachable") return setup.access.trust.length > 0;
    // Only a lock declared with a limit above 1 can be full (a limit-1 lock that is held is running).
    if (r === "full") return setup.declared.some((d) => d.name === lock && d.limit > 1);
    if (r === "frozen") return frozen;
    // Only a lock declared queue = "newest" supersedes waiters and refuses stale versions.
    if (r === "superseded" || r === "stale") return setup.declared.some((d) => d.name === lock && d.queue === "newest");
    // Only a name RS_LOCKS does not allow is unknown, and such a name has no series of its own.
    if (r === "unknown-lock") return lock === OTHER && setup.locks !== null;
    // With RS_LOCKS, a start on another name is refused before the rules of any lock are asked.
    if (lock === OTHER && setup.locks) return ["invalid", "forbidden", "too-large", "shutting-down"].includes(r);
    return true;
  });
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

const label = (lock: string) => `lock="${(lock === ROOT ? ROOT_LABEL : lock).replace(/["\\]/g, "\\$&")}"`;

type Metric = (name: string, type: string, help: string, lines: string[]) => void;

/**
 * The metrics, the locks' series from one snapshot (see engine.ts `snapshot`); with no snapshot (the state
 * cannot be read), only those of the daemon itself, so that a scrape still says that storage fails.
 */
export function renderMetrics(healthy: boolean, snap: Snapshot | null, setup: Setup): string {
  const out: string[] = [];
  const metric: Metric = (name, type, help, lines) =>
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
  metric("releasestatus_storage_healthy", "gauge", "Whether the last write to storage succeeded (1) or failed (0).", [
    `releasestatus_storage_healthy ${healthy ? 1 : 0}`,
  ]);
  metric(
    "releasestatus_build_info",
    "gauge",
    "Always 1: the version of releasestatus and of the Bun it was built with.",
    [`releasestatus_build_info{version=${JSON.stringify(pkg.version)},bun_version=${JSON.stringify(Bun.version)}} 1`],
  );
  processMetrics(metric);
  if (snap) lockMetrics(metric, snap, setup);
  return `${out.join("\n")}\n`;
}

// When the process started, in seconds since the epoch: worked out once, as uptime grows with the clock.
const PROCESS_START = Date.now() / 1000 - process.uptime();

/** The process_* metrics every Prometheus client exports; open file descriptors only where /proc has them. */
function processMetrics(metric: Metric) {
  const cpu = process.cpuUsage();
  metric("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.", [
    `process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`,
  ]);
  metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [
    `process_resident_memory_bytes ${process.memoryUsage.rss()}`,
  ]);
  metric("process_start_time_seconds", "gauge", "Start time of the process since the epoch, in seconds.", [
    `process_start_time_seconds ${PROCESS_START.toFixed(3)}`,
  ]);
  const fds = openFds();
  if (fds !== null)
    metric("process_open_fds", "gauge", "Number of open file descriptors.", [`process_open_fds ${fds}`]);
  const max = maxFds();
  if (max !== null)
    metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", [`process_max_fds ${max}`]);
}

function openFds(): number | null {
  try {
    return readdirSync("/proc/self/fd").length - 1; // the directory being read is one of them
  } catch {
    return null; // not Linux
  }
}

function maxFds(): number | null {
  try {
    const limit = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"))?.[1];
    return limit === undefined ? null : Number(limit);
  } catch {
    return null;
  }
}

function lockMetrics(metric: Metric, snap: Snapshot, setup: Setup) {
  const names = seriesLocks(snap, setup);
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
    `Whether the lock itself is blocked (1) or not (0); lock="${ROOT_LABEL}" is the root, whose block blocks every lock.`,
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
    (l) => (freezeOn(windowsOver(l), l, now) ? 1 : 0),
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
  metric(
    "releasestatus_releases_started_total",
    "counter",
    "Releases started since the daemon started.",
    names.map((l) => `releasestatus_releases_started_total{${label(l)}} ${counts(l).started}`),
  );
  metric(
    "releasestatus_start_refused_total",
    "counter",
    `Starts refused since the daemon started, by lock and reason; lock="${OTHER}" for a name with no series of its own.`,
    [...names, OTHER].flatMap((l) => {
      const possible = possibleRefusals(l, setup);
      return START_REFUSALS.filter((r) => (counts(l).refused[r] ?? 0) > 0 || possible.includes(r)).map(
        (r) => `releasestatus_start_refused_total{${label(l)},reason="${r}"} ${counts(l).refused[r] ?? 0}`,
      );
    }),
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
}
