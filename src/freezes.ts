// The freeze calendar at work: which locks are frozen now (for starts, status,
// metrics and the page), and the keeper that records each window's beginning
// and end in the history (`frozen`, `thawed`) exactly once, whatever replicas
// and restarts, catching up on a boundary it missed while the daemon was down.
// The schedule itself is src/calendar.ts (pure); this module reads the clock.
import {
  DAYS,
  describeFreeze,
  describeLocalTime,
  type Freeze,
  freezeOn,
  lastOccurrence,
  nextFreeze,
  nextOccurrences,
  type Occurrence,
  occurrenceAt,
  type Window,
} from "./calendar.ts";
import { type Clock, health, recordOnce, useCalendar, wakeWaiters, windowKnown } from "./engine.ts";
import { type Event, type Frozen, iso, ROOT } from "./release.ts";
import { markKey } from "./store/store.ts";

const TICK_MS = 60_000; // at the latest: catches reloads, clock jumps and a database that was away

/** The calendar in force: the configuration's windows (replaced on reload). */
let windows: Window[] = [];
let clock: Clock | null = null;
let cancelTick = () => {};
const recorded = new Set<string>(); // marks known to be in the store: not written again each tick

/** A window's identity in the store: the same definition is the same window across restarts and replicas. */
export const windowKey = (w: Window): string =>
  Bun.SHA256.hash(JSON.stringify([w.reason, w.locks, w.timezone, w.rule]), "hex") as string;

/** The freeze in force on `lock` at `now`, as a start sees it. */
export function frozenAt(lock: string, now: number): Frozen | null {
  const f = freezeOn(windows, lock, now);
  return f && { reason: f.reason, until: f.until, message: describeFreeze(lock, f, now) };
}

/** What /status, /freezes, the page and the metrics show of the calendar for a lock. */
export function calendarOf(lock: string, now: number): { now: Freeze | null; next: Freeze | null } {
  return { now: freezeOn(windows, lock, now), next: nextFreeze(windows, lock, now) };
}

export const freezeWindows = (): Window[] => windows;

/** A freeze (in force or coming) as JSON: times in UTC and on the window's own clock. */
export const freezeJson = (f: Freeze) => ({
  reason: f.reason,
  from: iso(f.from),
  until: iso(f.until),
  fromLocal: describeLocalTime(f.from, f.window.timezone),
  untilLocal: describeLocalTime(f.until, f.window.timezone),
  timezone: f.window.timezone,
});

/** A window's schedule in the file's own words: `every Fri 16:00 - Mon 08:00`, `from … until …`, `cron … to …`. */
export function describeSchedule(w: Window): string {
  const r = w.rule;
  const at = (m: number) => `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
  if (r.kind === "weekly")
    return `every ${DAYS[r.start.day]} ${at(r.start.minute)} - ${DAYS[r.end.day]} ${at(r.end.minute)} (${w.timezone})`;
  if (r.kind === "once")
    return `from ${describeLocalTime(r.from, w.timezone)} until ${describeLocalTime(r.until, w.timezone)}`;
  return `from each "${r.start.text}" to the next "${r.end.text}" (cron, ${w.timezone})`;
}

/** Every window with its next occurrences, in UTC and on its own clock: for /freezes and check-config. */
export function upcoming(list: readonly Window[], now: number, count: number) {
  return list.map((w) => ({
    window: w,
    occurrences: nextOccurrences(w, now, count).map((o) => ({
      ...o,
      fromLocal: describeLocalTime(o.from, w.timezone),
      untilLocal: describeLocalTime(o.until, w.timezone),
    })),
  }));
}

/**
 * Starts the calendar: starts ask it, and boundaries are recorded from now on. Resolves after its first
 * look, so that a freeze in force is in the history before the daemon answers anyone.
 */
export function keepCalendar(list: Window[], c: Clock): Promise<void> {
  windows = list;
  clock = c;
  useCalendar(frozenAt);
  return tick();
}

/** A reload: the new windows apply to the next start at once, and their boundaries are looked at now. */
export function replaceCalendar(list: Window[]): void {
  const before = windows;
  windows = list;
  wakeWaiters(); // a freeze may have gone: waiters try again now, not when it would have ended
  if (!clock) return;
  const now = clock.now();
  const keys = (ws: Window[]) => new Set(ws.map(windowKey));
  const [oldKeys, newKeys] = [keys(before), keys(list)];
  const removed = before.filter((w) => !newKeys.has(windowKey(w)) && occurrenceAt(w, now));
  const added = list.filter((w) => !oldKeys.has(windowKey(w)) && occurrenceAt(w, now));
  reloads.push(() => settleReload(removed, added, now)); // done by the keeper's next look, before the rest
  void tick();
}

/** What reloads left for the keeper to record, in order. */
const reloads: (() => Promise<void>)[] = [];

// A window in force that a reload removed has ended now: recorded as thawed. One that a reload only edited
// (another in force on the same lock took its place) is the same freeze: no thaw, and no second start.
async function settleReload(removed: Window[], added: Window[], now: number) {
  const locksOf = (ws: Window[]) => new Set(ws.flatMap((w) => w.locks ?? [ROOT]));
  const [wasFrozen, isFrozen] = [locksOf(removed), locksOf(added)];
  try {
    for (const w of removed)
      for (const lock of w.locks ?? [ROOT])
        if (!isFrozen.has(lock))
          await once(windowKey(w), lock, "thawed", now, `${w.reason} (removed from the calendar)`);
    for (const w of added) {
      const o = occurrenceAt(w, now);
      for (const lock of w.locks ?? [ROOT])
        if (o && wasFrozen.has(lock)) await once(windowKey(w), lock, "frozen", o.from, null);
    }
  } catch {} // a store that is away: the next look records what it can
}

export function stopCalendar(): void {
  cancelTick();
  clock = null;
  windows = [];
  recorded.clear();
  reloads.length = 0;
}

// The latest boundary of a window at or before `now`: the start of the occurrence in force, else the
// end of the last one that ended.
function latestBoundary(w: Window, now: number): { kind: "frozen" | "thawed"; at: number; o: Occurrence } | null {
  const inForce = occurrenceAt(w, now);
  if (inForce) return { kind: "frozen", at: inForce.from, o: inForce };
  const last = lastOccurrence(w, now);
  return last && { kind: "thawed", at: last.until, o: last };
}

/** Whether this daemon has seen the window's latest boundary recorded in the store (by it, or by another replica). */
export function boundaryRecorded(w: Window, now: number): boolean {
  const b = latestBoundary(w, now);
  if (!b) return true;
  const key = windowKey(w);
  return (w.locks ?? [ROOT]).every((lock) => recorded.has(markKey({ window: key, lock, kind: b.kind, at: b.at })));
}

// When the next boundary of any window comes: the keeper looks again then.
function nextBoundary(now: number): number {
  let next = now + TICK_MS;
  for (const w of windows) {
    const inForce = occurrenceAt(w, now);
    const o = inForce ? null : nextOccurrences(w, now, 2).find((x) => x.from > now);
    const at = inForce ? inForce.until : o?.from;
    if (at !== undefined && at < next) next = at;
  }
  return next;
}

let ticking: Promise<void> | null = null;
let again = false; // asked to look while looking: look once more after

/** Resolves once the keeper has recorded what was due when it was last asked to look. */
export const calendarSettled = async (): Promise<void> => {
  while (ticking) await ticking;
};

function tick(): Promise<void> {
  if (ticking) {
    again = true;
    return ticking;
  }
  ticking = look().finally(() => {
    ticking = null;
    if (again) {
      again = false;
      void tick();
    }
  });
  return ticking;
}

async function look(): Promise<void> {
  const c = clock;
  if (!c) return;
  cancelTick();
  try {
    for (const settle of reloads.splice(0)) await settle();
    const now = c.now();
    for (const w of windows) await recordLatest(w, now);
  } catch {} // a store that is away: the next look tries again
  if (clock !== c) return;
  const now = c.now();
  cancelTick = c.after(Math.max(nextBoundary(now) - now, 0) + 1, () => tick());
}

// Records the window's latest boundary on each lock it names (the root when it names none), once. A window
// never seen before starts quietly: its past end is marked without an event, so adding a window to the
// file does not write history for a time it was not configured; if it is in force, its start is recorded.
async function recordLatest(w: Window, now: number): Promise<void> {
  const key = windowKey(w);
  const seen = { window: key, lock: ROOT, kind: "seen", at: 0 }; // the window was configured from then on
  if (!recorded.has(markKey(seen))) {
    const known = await windowKnown(key);
    // Written now, or just now by another replica; not written at all (the store is away): the next look tries again.
    if (!known && !(await recordOnce(seen, [])) && !health().ok) return;
    recorded.add(markKey(seen));
    // Seen for the first time: an occurrence that already ended is history from before it was configured.
    const b = known ? null : latestBoundary(w, now);
    if (b?.kind === "thawed")
      for (const lock of w.locks ?? [ROOT]) {
        await once(key, lock, "frozen", b.o.from, null);
        await once(key, lock, "thawed", b.o.until, null);
      }
  }
  const b = latestBoundary(w, now);
  if (!b) return;
  for (const lock of w.locks ?? [ROOT]) {
    // An occurrence that began and ended while the daemon was down: its start is recorded before its end.
    if (b.kind === "thawed") await once(key, lock, "frozen", b.o.from, w.reason);
    await once(key, lock, b.kind, b.at, w.reason);
  }
}

// Records a boundary (with its event, or none when `reason` is null) unless this daemon knows it is recorded.
async function once(window: string, lock: string, kind: "frozen" | "thawed", at: number, reason: string | null) {
  const mark = { window, lock, kind, at };
  if (recorded.has(markKey(mark))) return;
  const events: Event[] = reason === null ? [] : [{ lock, at, kind, releaseId: null, name: "", reason }];
  // Written now, or found written by another replica or an earlier run; a failed write is tried again.
  if ((await recordOnce(mark, events)) || health().ok) recorded.add(markKey(mark));
}
