// The freeze calendar at work: which locks are frozen now (for starts, status,
// metrics and the page), and the keeper that records when each lock becomes
// frozen and stops being so (`frozen`, `thawed`) exactly once, whatever
// replicas, restarts and reloads, catching up on what it missed while down.
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
import type { Clock, Engine } from "./engine.ts";
import { blockedOver, type Event, type Frozen, ROOT, statusAfter } from "./release.ts";
import { ancestorsOf, type Mark, type Marked } from "./store/store.ts";
import { iso } from "./words.ts";

const TICK_MS = 60_000; // at the latest: catches reloads, clock jumps and a database that was away

/** The calendar in force: the configuration's windows (replaced on reload). */
let windows: Window[] = [];
/** The same windows by the locks they name, and their place in the file: a lock's are looked up, not searched. */
let index = indexOf([]);
let clock: Clock | null = null;
/** The engine the keeper records in and whose waiters a reload wakes: null while the calendar is stopped. */
let keeping: Engine | null = null;
let cancelTick = () => {};

/** A window's identity in the store: the same definition is the same window across restarts and replicas. */
export const windowKey = (w: Window): string =>
  Bun.SHA256.hash(JSON.stringify([w.reason, w.locks, w.timezone, w.rule]), "hex") as string;

/** The freeze in force on `lock` at `now`, as a start sees it. */
export function frozenAt(lock: string, now: number): Frozen | null {
  const f = freezeOn(windowsOver(lock), lock, now);
  return f && { reason: f.reason, until: f.until, message: describeFreeze(lock, f, now) };
}

/** What /status, /freezes, the page and the metrics show of the calendar for a lock. */
export function calendarOf(lock: string, now: number): { now: Freeze | null; next: Freeze | null } {
  const over = windowsOver(lock);
  return { now: freezeOn(over, lock, now), next: nextFreeze(over, lock, now) };
}

/** The windows that cover `lock` (on every lock, on it, or on a lock above it), in the file's order. */
export function windowsOver(lock: string): Window[] {
  const found = new Set(index.every);
  for (const name of [lock, ...ancestorsOf(lock)]) for (const w of index.byLock.get(name) ?? []) found.add(w);
  return found.size <= 1
    ? [...found]
    : [...found].sort((a, b) => (index.place.get(a) ?? 0) - (index.place.get(b) ?? 0));
}

function indexOf(list: Window[]) {
  const byLock = new Map<string, Window[]>();
  for (const w of list) for (const name of w.locks ?? []) byLock.set(name, [...(byLock.get(name) ?? []), w]);
  return { every: list.filter((w) => w.locks === null), byLock, place: new Map(list.map((w, i) => [w, i])) };
}

function useWindows(list: Window[]) {
  windows = list;
  index = indexOf(list);
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
 * Starts the calendar: starts ask it (the engine was given frozenAt at its creation), and boundaries are
 * recorded in `engine` from now on. Resolves after its first look, so that a freeze in force is in the
 * history before the daemon answers anyone.
 */
export function keepCalendar(engine: Engine, list: Window[], c: Clock): Promise<void> {
  useWindows(list);
  clock = c;
  keeping = engine;
  return tick();
}

/**
 * A reload: the new windows apply to the next start at once, and waiters try again. What the history says
 * follows from the lock's freeze before and after: a window the reload removed froze its locks only up to
 * now, and one it added freezes them only from now (never back-dated before the reload).
 */
export function replaceCalendar(list: Window[]): void {
  const now = clock?.now() ?? 0;
  const [before, after] = [new Set(windows.map(windowKey)), new Set(list.map(windowKey))];
  for (const w of windows)
    if (!after.has(windowKey(w))) {
      retired.push({ window: w, from: horizon(w), until: now, removed: true });
      horizons.delete(windowKey(w)); // should it come back, it counts from then
    }
  for (const w of list) if (!before.has(windowKey(w))) horizons.set(windowKey(w), now);
  useWindows(list);
  keeping?.wakeWaiters(); // a freeze may have gone: waiters try again now, not when it would have ended
  if (clock) void tick();
}

export function stopCalendar(): void {
  cancelTick();
  clock = null;
  keeping = null;
  useWindows([]);
  horizons.clear();
  retired.length = 0;
  lookedAt.clear();
  seen.clear();
  storedFreezesLookedAt = false;
}

// ---- the keeper: the history of each lock's freeze ----
//
// What is recorded is the edges of "is this lock frozen by a window that names it" (the root for a window
// on every lock): `frozen` when it becomes so, `thawed` when it stops, each once. The last edge of each lock
// is a mark in the store (series EDGES), and the next one is decided on it inside the write transaction, so
// replicas and restarts agree. An edge is dated when it took effect (a window's start or end, a reload), but
// never before the lock's last edge nor an event already in the history: /history stays in time order.

const EDGES = "freeze"; // the marks' series: a window's key is 64 hex digits, so this cannot be one

/** From when each window counts, by key: since a reload added it; from its first sight; always when known. */
const horizons = new Map<string, number>();
/** Windows a reload removed, which froze their locks up to the reload: kept until the keeper has looked. */
const retired: Span[] = [];
/** When the keeper last looked at each lock and found its history complete: for /freezes. */
const lookedAt = new Map<string, number>();
/** Whether the keeper has looked at the locks the store last recorded frozen (once, after each start). */
let storedFreezesLookedAt = false;

/** A window as the keeper counts it: its occurrences, cut to the time it was in the calendar. */
type Span = { window: Window; from: number; until: number; removed: boolean };
/** One occurrence, so cut, and the window it is of. */
type Piece = Occurrence & { span: Span };

const horizon = (w: Window): number => horizons.get(windowKey(w)) ?? Number.NEGATIVE_INFINITY;
const locksOf = (w: Window): string[] => w.locks ?? [ROOT];

// The occurrence of the span's window in force at `t`, cut to the span; null when there is none.
function pieceAt(span: Span, t: number): Piece | null {
  if (t < span.from || t >= span.until) return null;
  const o = occurrenceAt(span.window, t);
  return o && { from: Math.max(o.from, span.from), until: Math.min(o.until, span.until), span };
}

// The last occurrence of the span's window that ended at or before `t`, cut to the span.
function pieceBefore(span: Span, t: number): Piece | null {
  const end = Math.min(t, span.until);
  const inForce = pieceAt(span, end - 1);
  if (inForce) return { ...inForce, until: Math.min(inForce.until, end) };
  const b = latestBoundary(span.window, end);
  if (b?.kind !== "thawed" || b.o.until <= span.from) return null;
  return { from: Math.max(b.o.from, span.from), until: b.o.until, span };
}

// The freeze (overlapping and touching occurrences together) that holds at `t`: from its start, named by the
// occurrence that ends last, as /status names it.
function freezeAt(spans: Span[], t: number): Piece | null {
  const cover = (at: number) => spans.map((s) => pieceAt(s, at)).filter((p) => p !== null);
  const now = cover(t);
  if (now.length === 0) return null;
  const named = now.reduce((a, b) => (b.until > a.until ? b : a));
  let from = Math.min(...now.map((p) => p.from));
  for (let step = 0; step < 100; step++) {
    const before = cover(from - 1);
    if (before.length === 0) break;
    from = Math.min(...before.map((p) => p.from));
  }
  return { ...named, from };
}

// The freeze that ended last at or before `t`, from its start to its end, named by the occurrence that ended it.
function freezeBefore(spans: Span[], t: number): Piece | null {
  const ended = spans.map((s) => pieceBefore(s, t)).filter((p) => p !== null);
  if (ended.length === 0) return null;
  const last = ended.reduce((a, b) => (b.until > a.until ? b : a));
  return { ...last, from: freezeAt(spans, last.until - 1)?.from ?? last.from };
}

type Edge = { kind: "frozen" | "thawed"; at: number; reason: string | null }; // reason null: a mark, no event

// What follows the lock's last edge, as the calendar says at `now`.
function nextEdges(spans: Span[], last: Mark | null, now: number): Edge[] {
  const since = last?.at ?? Number.NEGATIVE_INFINITY;
  const current = freezeAt(spans, now);
  const frozen = (p: Piece): Edge => ({ kind: "frozen", at: p.from, reason: p.span.window.reason });
  if (last?.kind === "frozen") {
    // A freeze that ended after the one recorded began, before the one now (if any): the lock thawed then.
    const ended = freezeBefore(spans, current?.from ?? now);
    const thawedThen = ended && ended.until > since ? ended : null;
    if (current && !thawedThen) return []; // the same freeze goes on (a reload may have changed its windows)
    const thawed: Edge = thawedThen
      ? { kind: "thawed", at: thawedThen.until, reason: thawReason(thawedThen) }
      : { kind: "thawed", at: now, reason: "its window is no longer in the calendar" };
    return current ? [thawed, frozen(current)] : [thawed];
  }
  if (current) return [frozen(current)];
  const ended = last === null ? null : freezeBefore(spans, now); // a lock first looked at has no past here
  if (ended && ended.until > since)
    return [frozen(ended), { kind: "thawed", at: ended.until, reason: thawReason(ended) }];
  // The first look at a lock that is not frozen: marked, so a later look knows what came after it.
  return last === null ? [{ kind: "thawed", at: now, reason: null }] : [];
}

const thawReason = (p: Piece): string =>
  p.span.removed ? `${p.span.window.reason} (removed from the calendar)` : p.span.window.reason;

// The edges as marks and events, each dated no earlier than the one before it (and strictly after the last
// mark, so the latest mark is the latest edge), nor than the newest event in the history.
function toMarks(engine: Engine, lock: string, edges: Edge[], last: Mark | null, newestEventAt: number): Marked | null {
  if (edges.length === 0) return null;
  let floor = Math.max(newestEventAt, (last?.at ?? Number.NEGATIVE_INFINITY) + 1);
  const marked: Marked = { marks: [], events: [] };
  for (const e of edges) {
    const at = Math.max(e.at, floor);
    floor = at + 1;
    marked.marks.push({ window: EDGES, lock, kind: e.kind, at });
    if (e.reason !== null) marked.events.push({ ...freezeEvent(engine, lock, e.kind, at), reason: e.reason });
  }
  return marked;
}

// A frozen or thawed event, with what the lock is after it: a thaw may leave it blocked, or frozen from above.
const freezeEvent = (engine: Engine, lock: string, kind: "frozen" | "thawed", at: number): Event => ({
  lock,
  at,
  kind,
  releaseId: null,
  name: "",
  reason: "",
  status: statusAfter(kind, { blocked: blockedOver(engine.state(lock), lock), frozen: frozenAt(lock, at) !== null }),
});

/** Whether this daemon has looked at every lock of the window since its latest boundary, and recorded it. */
export function boundaryRecorded(w: Window, now: number): boolean {
  const at = latestBoundary(w, now)?.at;
  return at === undefined || locksOf(w).every((lock) => (lookedAt.get(lock) ?? Number.NEGATIVE_INFINITY) >= at);
}

// The latest boundary of a window at or before `now`: the start of the occurrence in force, else the
// end of the last one that ended.
function latestBoundary(w: Window, now: number): { kind: "frozen" | "thawed"; at: number; o: Occurrence } | null {
  const inForce = occurrenceAt(w, now);
  if (inForce) return { kind: "frozen", at: inForce.from, o: inForce };
  const last = lastOccurrence(w, now);
  return last && { kind: "thawed", at: last.until, o: last };
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
  const engine = keeping;
  if (!c || !engine) return;
  const { health, locksMarked, recordNext } = engine;
  cancelTick();
  try {
    await learnHorizons(engine, c.now());
    const now = c.now();
    const removed = [...retired];
    const spans: Span[] = [
      ...windows.map((w) => ({ window: w, from: horizon(w), until: Number.POSITIVE_INFINITY, removed: false })),
      ...removed,
    ];
    const locks = new Set(spans.flatMap((s) => locksOf(s.window)));
    // The first look also takes the locks the store last recorded frozen: one whose window left the file while
    // the daemon was down is no longer named by any window, and its thaw is recorded now, as a reload's would be.
    if (!storedFreezesLookedAt) for (const lock of await locksMarked(EDGES, "frozen")) locks.add(lock);
    let complete = true;
    for (const lock of locks) {
      const on = spans.filter((s) => locksOf(s.window).includes(lock));
      await recordNext(EDGES, lock, (last, newestEventAt) =>
        toMarks(engine, lock, nextEdges(on, last, now), last, newestEventAt),
      );
      if (health().ok) lookedAt.set(lock, now);
      else complete = false; // a store that is away: the next look records what it can
    }
    // What they froze has been recorded: they no longer count (a reload meanwhile may have added more).
    if (complete) {
      retired.splice(0, removed.length);
      storedFreezesLookedAt = true;
    }
  } catch {} // a store that is away: the next look tries again
  if (clock !== c) return;
  const now = c.now();
  cancelTick = c.after(Math.max(nextBoundary(now) - now, 0) + 1, () => tick());
}

// A window first seen counts from its start if it is in force, else from now: adding it to the file writes
// no history for a time it was not configured. One seen before (by this daemon or another, in an earlier
// run) counts always: a boundary it had while the daemon was down is recorded when it is back. Each window is
// marked seen in the store.
async function learnHorizons(engine: Engine, now: number): Promise<void> {
  const { health, recordOnce, windowKnown } = engine;
  for (const w of windows) {
    const key = windowKey(w);
    if (horizons.has(key) && seen.has(key)) continue;
    const seenMark = { window: key, lock: ROOT, kind: "seen", at: 0 };
    const known = await windowKnown(key);
    // Written now, or just now by another replica; not written at all (the store is away): the next look tries again.
    if (!known && !(await recordOnce(seenMark, [])) && !health().ok) throw new Error("the store is away");
    seen.add(key);
    if (!horizons.has(key)) horizons.set(key, known ? Number.NEGATIVE_INFINITY : (occurrenceAt(w, now)?.from ?? now));
  }
}
const seen = new Set<string>(); // windows known to be marked seen in the store
