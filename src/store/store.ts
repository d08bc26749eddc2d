// What the engine needs from storage, and nothing more: read the state around
// a lock, run one decision inside a write transaction and commit what it
// changed, keep the wait line, read the history. Memory, SQLite and PostgreSQL
// implement it; what is peculiar to one of them (a lock file, a probe,
// heartbeats, LISTEN) stays inside that store.
import { claimsOverlap } from "../claim.ts";
import {
  type Block,
  type Change,
  DEFAULT_LOCK,
  type Event,
  type EventKind,
  type Holder,
  holding,
  isAncestor,
  type Neighbour,
  type Outcome,
  overlaps,
  type Refusal,
  type Release,
  type Released,
  ROOT,
  refuse,
  type State,
  WAITABLE,
  withUrgent,
} from "../release.ts";
import { compareVersions } from "../version.ts";
import { describeSupersededBy } from "../words.ts";
import type { FindAround } from "./around.ts";

/**
 * Decides a transition from the rows as stored (around every lock of the claim, and every row a release
 * among them also holds), the store's time, and how many wait ahead of the caller: the answer, and the
 * change to commit (which a refusal may carry too: a lease that ran out).
 */
// `ahead`: how many wait ahead of the caller, counted only if the decision asks (a start nothing else refuses):
// with thousands of waiters, a refusal for a running release costs no walk of the line.
export type Decide = (stored: Stored, now: number, ahead: () => number) => Verdict;
export type Verdict = { outcome: Outcome; change: Change | null };

/**
 * One lock as stored: the releases holding it (oldest first), its block, a number that grows with every change
 * to it, and on a newest-first lock the last version granted there (absent in rows from before it was kept).
 */
export type Entry = { releases: Release[]; block: Block | null; version: number; released?: Released };

/**
 * The state around a lock as stored: every lock the decision may touch, and the id counter; with
 * `freedAt`, when each lock asked about last came free (a pool takes the child free the longest).
 */
export type Stored = {
  lastId: number;
  entries: Map<string, Entry>;
  freedAt?: Map<string, number>;
};

export type { Released };

/**
 * A change that is on disk (or in the database) now: `entries` are the locks it wrote, as written;
 * `before` and `after` the state around its lock (null when it only recorded someone leaving the line).
 */
export type Committed = {
  lock: string;
  events: Event[];
  before: State | null;
  after: State | null;
  entries: Map<string, Entry>;
};

/**
 * A waiter as /status shows it: `lock` is the first lock it asked for; `reach`, when it asked for more than
 * that one exact lock, every lock its claim may hold (a pool's declared children), to tell whom it overlaps.
 */
export type Queued = {
  id: number;
  lock: string;
  name: string;
  reason: string;
  since: number;
  by?: string;
  reach?: string[];
  version?: string; // the version its start carried (version=)
  urgent?: string; // why it waits ahead of every non-urgent waiter (urgent=)
  override?: string; // why it may start during a freeze (override=): waiters the freeze stops stand aside for it
};

/** Who joins the line: the holder, and what orders it there (its version, why it is urgent, why it overrides). */
export type Joiner = Holder & { version?: string; urgent?: string; override?: string };

/** A waiter as its store keeps it, from who joined: only the fields it was given. */
export const waiterOf = (id: number, lock: string, who: Joiner, since: number): Queued => ({
  id,
  lock,
  name: who.name,
  reason: who.reason,
  since,
  by: who.by,
  ...(who.version === undefined ? {} : { version: who.version }),
  ...(who.urgent === undefined ? {} : { urgent: who.urgent }),
  ...(who.override === undefined ? {} : { override: who.override }),
});

/** The locks a waiter's claim may hold. */
export const reachOf = (w: Queued): readonly string[] => w.reach ?? [w.lock];

/** Whether a freeze is in force now on any of these locks (the calendar's answer, at the decision's time). */
export type FrozenNow = (locks: readonly string[]) => boolean;

/** Whether a freeze stops this waiter or start: one is in force on its claim, and it does not override it. */
export const heldByFreeze = (w: { override?: string }, reach: readonly string[], frozen: FrozenNow): boolean =>
  w.override === undefined && frozen(reach);

/** How a newcomer asks: in the urgent lane, and with an override (see waitersAhead). */
export type Asking = { urgent?: boolean; override?: boolean };

/**
 * The rule of the line, for every store: how many of `line` wait before `self` (a newcomer, without it: `asking`
 * says whether it asks for the urgent lane and overrides) with a claim that overlaps `reach`. Urgent waiters
 * wait ahead of every other; within each lane, first come first served. Each is served first: a claim passes no
 * overlapping waiter ahead of it, except that a waiter the freeze stops does not stand in front of an override,
 * which could start where it cannot (docs/freezes.md: Override); among overrides, first come first served.
 */
export function waitersAhead(
  line: readonly Queued[],
  reach: readonly string[],
  self: number | undefined,
  asking: Asking = {},
  frozen: FrozenNow = () => false,
): number {
  const me = self === undefined ? undefined : line.find((w) => w.id === self);
  const mine = me ? me.urgent !== undefined : asking.urgent === true;
  const overrides = me ? me.override !== undefined : asking.override === true;
  let n = 0;
  for (const w of line) {
    const theirs = w.urgent !== undefined;
    // Only those before `self`, and the urgent lane for a non-urgent waiter, can be ahead: the others are passed
    // over before the (dearer) look at their claims.
    if (self !== undefined && w.id >= self && (mine || !theirs)) continue;
    if (!claimsOverlap(reachOf(w), reach)) continue;
    if (overrides && heldByFreeze(w, reachOf(w), frozen)) continue;
    if ((theirs && !mine) || (theirs === mine && (self === undefined || w.id < self))) n++;
  }
  return n;
}

/** The line in the order it is served: the urgent lane first, each lane first come, first served. */
export const inServiceOrder = (line: Queued[]): Queued[] => {
  const inOrder = line.every((w, i) => w.urgent === undefined && (i === 0 || (line[i - 1] as Queued).id < w.id));
  if (inOrder) return line; // the common case, without a sort of the whole line at every change
  return [...line].sort((a, b) => Number(b.urgent !== undefined) - Number(a.urgent !== undefined) || a.id - b.id);
};

/** Whether a newcomer asks for the urgent lane. */
export const isUrgent = (options: TransactOptions): boolean =>
  options.urgent === true || options.join?.urgent !== undefined;

/** How a newcomer asks, as its options say: its lane, and whether it overrides a freeze. */
export const askingOf = (options: TransactOptions): Asking => ({
  urgent: isUrgent(options),
  override: options.override === true || options.join?.override !== undefined,
});

/** Whether two waiters asked for the same locks: the same claim, which a newer start of it may supersede. */
const sameClaim = (a: readonly string[], b: readonly string[]): boolean =>
  a.length === b.length && a.every((l) => b.includes(l));

// Whether `newer` takes the place of `older` in a newest-first line: a higher or equal version, or, when either
// has none, simply by arriving later.
const takesPlaceOf = (newer: Joiner, older: Queued): boolean =>
  newer.version === undefined || older.version === undefined || compareVersions(newer.version, older.version) >= 0;

/**
 * The rule of a newest-first line, for every store: what a start joining it (`who`, claiming `reach`) does to
 * the waiters of the same claim in the same lane. It supersedes each it takes the place of (`passed`); such a
 * waiter with a higher version supersedes it instead (`by`, and it passes none). Waiters of other claims are
 * untouched, and so are those of the other lane: a newer CI build never takes an urgent hotfix's place. During
 * a freeze, one the freeze stops never takes the place of one that overrides it, either way round: both wait.
 */
export function supersede(
  line: readonly Queued[],
  who: Joiner,
  reach: readonly string[],
  frozen: FrozenNow = () => false,
): { passed: Queued[]; by: Queued | null } {
  const lane = (w: { urgent?: string }) => w.urgent !== undefined;
  const held = (w: { override?: string }) => heldByFreeze(w, reach, frozen);
  // Whether `a` may take the place of `b` at all: it can start wherever `b` can.
  const mayPass = (a: { override?: string }, b: { override?: string }) => !held(a) || held(b);
  const same = line.filter((w) => sameClaim(reachOf(w), reach) && lane(w) === lane(who));
  const by = same.find((w) => mayPass(w, who) && !takesPlaceOf(who, w)) ?? null;
  if (by) return { passed: [], by };
  return { passed: same.filter((w) => mayPass(who, w) && takesPlaceOf(who, w)), by: null };
}

/** What a start on a newest-first line does as it is decided: the waiters it passes, or why it is itself passed. */
export type Superseding = { passed: Queued[]; refusal: Refusal | null };
const NONE: Superseding = { passed: [], refusal: null };

/** The waiters a newcomer on a newest-first lock passes (only when it joins: `options.newest` and `join`). */
export function superseding(line: readonly Queued[], options: TransactOptions, lock: string): Superseding {
  if (!options.newest || !options.join || options.self !== undefined) return NONE;
  const { passed, by } = supersede(line, options.join, options.claim ?? [lock], options.frozen);
  return { passed, refusal: by ? refuse("superseded", describeSupersededBy(by, "waits already")) : null };
}

/** The `superseded` event of a waiter passed by `who`, with the words it is answered with. */
export function supersededEvent(w: Queued, who: Joiner, started: boolean, at: number): Event {
  const reason = describeSupersededBy(who, started ? "started in your place" : "now waits in your place");
  return { ...queueEvent("left-queue", w.lock, w, at, reason), kind: "superseded" };
}

export type TransactOptions = {
  start?: boolean; // a start, which the waiters ahead of it hold back: PostgreSQL reads the wait line for no other change
  claim?: readonly string[]; // every lock the decision may hold (a pool's children too); without it, the one lock
  freedOf?: readonly string[]; // the locks whose last end the decision needs (a pool's children): see Stored.freedAt
  newest?: boolean; // the claim is on a newest-first lock: joining supersedes older waiters of the same claim
  urgent?: boolean; // a start in the urgent lane: only urgent waiters count ahead of it
  override?: boolean; // a start that overrides a freeze: waiters the freeze stops do not count ahead of it
  frozen?: FrozenNow; // whether a freeze is in force on locks now: who it stops (see waitersAhead, supersede)
  self?: number; // the caller's own place in the wait line: only waiters before it count as ahead
  join?: Joiner; // join the wait line in the same transaction when the answer is a refusal worth waiting out
  room?: Room; // how many lock names may be stored: a change that would store one more is refused beyond it
};

/**
 * How many lock names may be stored (RS_MAX_LOCKS), and, for a token limited to some locks, how many of
 * them may be under its locks (its share): so no token can use up the names that others' locks need.
 */
export type Room = { most: number; share: { who: string; locks: readonly string[]; most: number } | null };

/** Whether `by` holds the lock: one of its releases, or its block. */
export const heldBy = (e: Entry, by: string): boolean => e.releases.some((r) => r.by === by) || e.block?.by === by;

/**
 * Counts the stored lock names that count against RS_MAX_LOCKS: all of them, or those under `locks` that
 * `by` holds (a release or a block of its): a token's share counts only its own names, not those another
 * token made under the same locks.
 */
export type CountNames = (locks: readonly string[] | null, by?: string) => number;

export type Decision = {
  outcome: Outcome;
  committed: Committed | null; // null when nothing was written
  joined: Queued | null; // the caller's new place in the wait line
};

export type Health = {
  writable: boolean; // the last write worked (or the probe since)
  readable: boolean; // the state can be read: false during a database outage, when it is unknown
  problem: string | null; // what is wrong, for /healthz and the log
};

/**
 * Told of a change another process made: the lock it decided on, its events, and the claim of a waiter it took
 * out of the line (served or gone), whose followers here may go now.
 */
export type Watcher = (lock: string, events: Event[], freed?: readonly string[]) => void;

export interface Store {
  readonly description: string; // where state lives, for logs and /status; never a password
  readonly notices?: readonly string[]; // what opening it found that the operator should hear of (logged as warnings)
  /** True when no other process can change what is stored: a refusal may then be decided from memory. */
  readonly exclusive: boolean;
  health(): Health;
  /** Every lock that holds a release or a block, or has ever been used, and the id counter. */
  readAll(): Promise<Stored>;
  /** The state around `lock` as stored; throws StorageError when it cannot be read. */
  read(lock: string): Promise<Stored>;
  /**
   * For a store other processes write too: the committed state around `lock`, how many wait ahead, and
   * the store's time, in one plain read outside any transaction. A refusal decided on it is a correct
   * answer as of that read; a change is always decided again in `transact`.
   */
  peek?(lock: string): Promise<{ stored: Stored; ahead: number; now: number }>;
  /**
   * One write transaction: reads the state around the lock, runs `decide` on it, and commits the
   * change it returns (its events, and the locks it changed) atomically. Resolves only once the
   * outcome is known; a failed or unknown commit resolves as the refusal `storage`, never as a change.
   */
  transact(lock: string, decide: Decide, options?: TransactOptions): Promise<Decision>;
  /** Leaves the wait line, recording why; null when the waiter already left. Needs no synchronous write. */
  leave(lock: string, waiter: number, why: string): Promise<Committed | null>;
  /**
   * Records a calendar boundary (a freeze beginning or ending on a lock) once: the mark and its events
   * commit together, and only if no one (no replica, no earlier run) marked it before. Null when it
   * was already marked, or could not be written (it is tried again on the next tick).
   */
  mark(mark: Mark, events: Event[]): Promise<Committed | null>;
  /**
   * Records what comes after the latest mark of `series` on `lock`, decided on it as stored: reads that mark
   * and the time of the newest event, asks `next` which marks (of the same series and lock, later than it)
   * and events follow, and commits them together in one write transaction, so replicas looking at once
   * record each once. Null when `next` says nothing, or it could not be written (tried again on the next tick).
   */
  markNext(series: string, lock: string, next: NextMarks): Promise<Committed | null>;
  /** The locks whose latest mark of `series` is of `kind` (the freeze keeper: which locks it last recorded frozen). */
  locksMarked(series: string, kind: string): Promise<string[]>;
  /** Whether any boundary of this window was ever marked: a window never seen before starts quietly. */
  marked(window: string): Promise<boolean>;
  /** Webhook deliveries: the events committed are the outbox, and each webhook's progress is kept beside them. */
  readonly outbox: Outbox;
  /** Everyone waiting, in order (another replica's waiters too). */
  waiting(): Queued[];
  /** Newest first; with `lock`, the events of that lock and the locks under it. Throws StorageError when unreadable. */
  history(limit: number, lock?: string): Promise<Event[]>;
  /** Calls `changed` when another process committed a change to `lock` (PostgreSQL replicas), and on each poll. */
  watch(changed: Watcher): void;
  /** A consistent copy of the whole database, for `releasestatus backup`; null when the store cannot give one. */
  backup(): Uint8Array | null;
  close(): Promise<void>;
}

/** An event as the outbox holds it: its sequence number in the store is its delivery id. */
export type Pending = { seq: number; event: Event };

/** Where a webhook stands: the last event it has done with, and how its head's delivery goes. */
export type Progress = {
  delivered: number; // every event up to this seq has been delivered, skipped or dropped
  attempts: number; // failed attempts at the event after it
  nextAt: number; // not before this time (epoch ms)
  dropped: number; // events dropped for this webhook, ever
};

/**
 * Delivery of committed events to webhooks, at least once and in order: an event is in the outbox
 * as soon as its change commits (it is a row of the history), and a webhook's progress is stored,
 * so a crash loses nothing that was not acknowledged. A new webhook starts from the newest event.
 */
export interface Outbox {
  /**
   * Takes the webhook's deliveries for this process (on PostgreSQL a claim that lapses after 30 s,
   * so one replica delivers and another takes over when it dies) and gives its progress and up to
   * `limit` events after it, oldest first. Null while another replica holds the claim. Events beyond
   * `backlog` behind the newest, or pruned from the history before delivery, are dropped and counted.
   */
  claim(
    webhook: string,
    limit: number,
    backlog: number,
  ): Promise<{ progress: Progress; events: Pending[]; newest: number } | null>;
  /** Done with every event up to `seq` (delivered, not wanted, or given up on: `dropped` more). */
  advance(webhook: string, seq: number, dropped: number): Promise<void>;
  /** The next event failed `attempts` times: try again at `at`. */
  retry(webhook: string, attempts: number, at: number): Promise<void>;
}

/**
 * Where a webhook's deliveries resume, the same on every store: events beyond `backlog` behind the newest, or
 * pruned from the history (older than `oldest`; null: none kept) before they were delivered, are dropped and
 * counted; the next one keeps the retry schedule the receiver is on. `skipped` says how many to record.
 */
export function catchUp(
  p: Progress,
  span: { oldest: number | null; newest: number },
  backlog: number,
): { progress: Progress; skipped: number } {
  const floor = Math.max(span.newest - backlog, (span.oldest ?? span.newest + 1) - 1);
  if (p.delivered >= floor) return { progress: p, skipped: 0 };
  const skipped = floor - p.delivered;
  return { progress: { ...p, delivered: floor, dropped: p.dropped + skipped }, skipped };
}

/** A boundary of a freeze window on a lock: the window's key, and which boundary, when. */
export type Mark = { window: string; lock: string; kind: string; at: number }; // also a reminder: "long-running"
export const markKey = (m: Mark) => `${m.window} ${m.lock} ${m.kind} ${m.at}`;
/** What markNext records: marks and the events they stand for. */
export type Marked = { marks: Mark[]; events: Event[] };
/** Decides what markNext records, from the latest mark and the time of the newest event (-Infinity: none). */
export type NextMarks = (latest: Mark | null, newestEventAt: number) => Marked | null;

/** Start-up problems with the database: the daemon says so and exits 2. */
export class StoreOpenError extends Error {}

/** The store could not be read: the state is unknown. */
export class StorageError extends Error {}

/** Events that change no state: recording them needs no synchronous write. */
export const onlyQueueEvents = (events: Event[]): boolean =>
  events.every((e) => e.kind === "waiting" || e.kind === "left-queue" || e.kind === "superseded");

export const EMPTY_ENTRY: Entry = { releases: [], block: null, version: 0 };

/** The names above a lock, nearest last: `prod/eu/x` → "", "prod", "prod/eu". */
export function ancestorsOf(lock: string): string[] {
  if (lock === ROOT) return [];
  const parts = lock.split("/");
  return [ROOT, ...parts.slice(1).map((_, i) => parts.slice(0, i + 1).join("/"))];
}

/**
 * The state a rule sees for `lock`: its own entry, and the locks above and below it that hold something
 * (found by a walk over every lock, or by an index of them: see around.ts).
 */
export function scopeOf(lock: string, stored: Stored, findAround?: FindAround): State {
  const own = stored.entries.get(lock) ?? EMPTY_ENTRY;
  const around: Neighbour[] = findAround ? findAround(lock) : [];
  if (!findAround)
    for (const [name, e] of stored.entries)
      if (name !== lock && (e.releases.length > 0 || e.block) && overlaps(name, lock))
        around.push({ lock: name, releases: e.releases, block: e.block });
  // The store knows no limits (the configuration does): the engine gives the decision its lock's.
  return holding(
    { lock, lastId: stored.lastId, limit: 1, releases: [], release: null, block: own.block, around },
    own.releases,
  );
}

/**
 * Whether a lock's row is deleted rather than written: it holds no release and no block, so nothing is
 * lost (its history stays in the events), and names used once do not pile up. The root keeps the id
 * counter, and the original's lock is always there; a newest-first lock keeps the last version granted
 * on it (a declared lock, so these rows are few).
 */
export const forgets = (name: string, e: Entry): boolean =>
  e.releases.length === 0 && e.block === null && e.released === undefined && name !== ROOT && name !== DEFAULT_LOCK;

/** Whether a lock name counts against RS_MAX_LOCKS: the root and the original's lock are always there. */
export const counted = (name: string): boolean => name !== ROOT && name !== DEFAULT_LOCK;

/**
 * The locks a change rewrote (its own, and any neighbour whose lease it ended), with their new versions.
 * A lock it forgets leaves its version in the root's row, and a name used again starts above that: a
 * cache that still remembers the forgotten row never mistakes the new one for an older answer.
 */
export function changedEntries(stored: Stored, after: State, also: Neighbour[] = []): Map<string, Entry> {
  const changed = new Map<string, Entry>();
  const root = stored.entries.get(ROOT) ?? EMPTY_ENTRY;
  let forgotten = 0; // the highest version among the rows this change forgets
  const put = (name: string, releases: Release[], block: Block | null, granted?: Released) => {
    const before = stored.entries.get(name);
    const released = granted ?? before?.released; // kept until the next start with a version is granted there
    if (before && sameReleases(before.releases, releases) && before.block === block && before.released === released)
      return;
    if (!before && releases.length === 0 && block === null && released === undefined) return;
    const entry: Entry = { releases, block, version: (before ?? root).version + 1 };
    if (released) entry.released = released;
    changed.set(name, entry);
    if (forgets(name, entry)) forgotten = Math.max(forgotten, entry.version);
  };
  // The lock the change decided on: a claim's first lock as held (a pool's child), not the pool it named.
  put(after.lock, after.releases, after.block);
  for (const n of after.around) put(n.lock, n.releases, n.block);
  for (const n of also) put(n.lock, n.releases, n.block, n.released); // a claim's other locks: as they are after it
  if (forgotten > 0) {
    const newRoot = changed.get(ROOT) ?? root;
    changed.set(ROOT, { ...newRoot, version: Math.max(newRoot.version, forgotten) });
  }
  return changed;
}

// Rules never change a release in place: the same objects in the same order are the same releases.
export const sameReleases = (a: Release[], b: Release[]): boolean =>
  a.length === b.length && a.every((r, i) => r === b[i]);

/** The lock names a verdict's change would store that are not stored yet, and count against RS_MAX_LOCKS. */
export function newNames(stored: Stored, verdict: Verdict): string[] {
  if (!verdict.change) return [];
  const names: string[] = [];
  for (const [name, entry] of changedEntries(stored, verdict.change.next, verdict.change.also))
    if (!stored.entries.has(name) && counted(name) && !forgets(name, entry)) names.push(name);
  return names;
}

/**
 * The refusal of a change that would store one lock name more than there is room for: RS_MAX_LOCKS
 * in all, or the asking token's share of it under its locks; null when there is room. Asked in the
 * write transaction, with counts of the names stored there, so every store and replica decides alike.
 */
export function noRoom(lock: string, room: Room, count: CountNames, adding = 1): Refusal | null {
  if (count(null) + adding > room.most)
    return refuse(
      "invalid",
      `lock ${lock} would be one lock more than RS_MAX_LOCKS (${room.most}): use a lock that holds a release or a block now, or end one on a lock no longer needed`,
    );
  const share = room.share;
  if (share && count(share.locks, share.who) + adding > share.most)
    return refuse(
      "invalid",
      `lock ${lock} would be one lock more than ${share.who}'s token may hold under ${share.locks.join(", ")} (${share.most}, its share of RS_MAX_LOCKS): end a release or block there first, or use a lock that holds one`,
    );
  return null;
}

/** The verdict, or, when its change would store a lock name beyond the room there is, that refusal, changing nothing. */
export function withinRoom(stored: Stored, verdict: Verdict, room: Room | undefined, count: CountNames): Verdict {
  const adding = room ? newNames(stored, verdict) : [];
  const full = room && adding.length > 0 ? noRoom(adding[0] as string, room, count, adding.length) : null;
  return full ? { outcome: full, change: null } : verdict;
}

/** Whether `name` is one of `locks` or under one of them. */
export const under = (locks: readonly string[], name: string): boolean =>
  locks.some((l) => l === name || isAncestor(l, name));

/**
 * A wait line kept in this process: right for a store that no other process shares
 * (memory, SQLite held exclusively), where waiters cannot outlive the process anyway.
 */
export class LocalWaitLine {
  private line: Queued[] = []; // in the order they joined, which is the order of their ids
  private nextId = 1;
  private superseded = new Map<number, string>(); // waiters a newer start passed, with their words, until told

  list(): Queued[] {
    return this.line;
  }

  /** Waiters before `self` (all, without it) whose claims overlap `reach`: they are served first. */
  ahead(reach: readonly string[], self: number | undefined): number {
    return waitersAhead(this.line, reach, self);
  }

  join(lock: string, who: Joiner, now: number, reach?: readonly string[]): Queued {
    const waiter = waiterOf(this.nextId++, lock, who, now);
    if (reach && !(reach.length === 1 && reach[0] === lock)) waiter.reach = [...reach];
    this.line = [...this.line, waiter];
    return waiter;
  }

  /** Takes these waiters out of the line: each is answered `superseded` with `words` at its next attempt. */
  supersede(passed: readonly Queued[], words: (w: Queued) => string) {
    for (const w of passed) if (this.leave(w.id)) this.superseded.set(w.id, words(w));
  }

  /** The answer of a waiter a newer start passed (forgotten once `told`, not by a preview): null for any other. */
  supersededAnswer(id: number | undefined, told: boolean): Refusal | null {
    const words = id === undefined ? undefined : this.superseded.get(id);
    if (words === undefined) return null;
    if (told) this.superseded.delete(id as number);
    return refuse("superseded", words);
  }

  leave(id: number): Queued | null {
    this.superseded.delete(id); // a superseded waiter that went away before it was told: nothing left to tell
    const waiter = this.line.find((w) => w.id === id) ?? null;
    if (waiter) this.line = this.line.filter((w) => w !== waiter);
    return waiter;
  }

  /** The line as it is, to put back if the transaction that changed it does not commit. */
  save(): () => void {
    const { line, nextId } = this;
    const superseded = new Map(this.superseded);
    return () => {
      this.line = line;
      this.nextId = nextId;
      this.superseded = superseded;
    };
  }
}

/** The event that records a waiter joining or leaving the line. */
export const queueEvent = (
  kind: "waiting" | "left-queue",
  lock: string,
  who: Joiner,
  at: number,
  reason: string,
): Event => ({
  lock,
  at,
  kind,
  releaseId: null,
  name: who.name,
  reason,
  by: who.by,
  ...(who.version === undefined ? {} : { version: who.version }),
});

/** What a transaction is to write: the events, the locks changed, and the id counter. */
export type Writes = { events: Event[]; entries: Map<string, Entry>; lastId: number | null };

/**
 * The body of a transaction for a store whose wait line is local: decides on the stored
 * state, hands what must be written to `write` (which throws when it could not commit), and
 * only then moves the caller in or out of the line. Without `write`, a preview that changes nothing.
 */
export function decideInLine(
  lock: string,
  stored: Stored,
  now: number,
  decide: Decide,
  line: LocalWaitLine,
  options: TransactOptions,
  count: CountNames,
  write: ((w: Writes) => void) | null,
): Decision {
  const before = scopeOf(lock, stored);
  const answered = line.supersededAnswer(options.self, write !== null);
  if (answered) return { outcome: answered, committed: null, joined: null };
  const { passed, refusal } = superseding(line.list(), options, lock);
  if (refusal) return { outcome: refusal, committed: null, joined: null };
  const rest = passed.length === 0 ? line.list() : line.list().filter((w) => !passed.includes(w));
  const ahead = () => waitersAhead(rest, options.claim ?? [lock], options.self, askingOf(options), options.frozen);
  const verdict = decide(stored, now, ahead);
  const { outcome, change } = withinRoom(stored, verdict, options.room, count);
  const joining = !outcome.ok && options.join !== undefined && WAITABLE.has(outcome.reason);
  const passing = outcome.ok || joining ? passed : [];
  const events = [...(change?.events ?? [])];
  const join = options.join;
  if (join) events.push(...passing.map((w) => supersededEvent(w, join, outcome.ok, now)));
  if (joining && join) events.push(queueEvent("waiting", lock, join, now, withUrgent(join.reason, join.urgent)));
  if (events.length === 0) return { outcome, committed: null, joined: null };
  const after = change?.next ?? before;
  const entries = change ? changedEntries(stored, after, change.also) : new Map<string, Entry>();
  const committed = { lock, events, before, after, entries };
  if (!write) return { outcome, committed, joined: null };
  write({ events, entries, lastId: after.lastId !== stored.lastId ? after.lastId : null });
  if (join) line.supersede(passing, (w) => supersededEvent(w, join, outcome.ok, now).reason);
  const joined = joining && join ? line.join(lock, join, now, options.claim) : null;
  if (outcome.ok && options.self !== undefined) line.leave(options.self);
  return { outcome, committed, joined };
}

/** A lock's row, as SQLite and PostgreSQL return it (PostgreSQL gives big integers as strings). */
export type LockRow = Record<
  | "name"
  | "last_id"
  | "version"
  | "release_id"
  | "holder"
  | "release_reason"
  | "started_at"
  | "expires_at"
  | "blocked_by"
  | "block_reason"
  | "blocked_since"
  | "release_by"
  | "block_by"
  | "other_releases"
  | "release_locks"
  | "release_version",
  string | number | null
> & { released?: string | null }; // JSON of Released; absent in a row read before the column was added
export type EventRow = Record<
  "lock" | "at" | "kind" | "release_id" | "name" | "reason" | "made_by",
  string | number | null
> & { status?: string | null; locks?: string | null; version?: string | null }; // status: read for the outbox only

const num = (v: string | number | null): number | null => (v === null ? null : Number(v));
const str = (v: string | number | null): string => (v === null ? "" : String(v));
// Whose token: absent (not empty) when none was named, and in rows written before tokens had names.
const by = (v: string | number | null | undefined): string | undefined => (v == null ? undefined : String(v));

export function toEntry(row: LockRow): Entry {
  const first: Release | null =
    row.release_id === null
      ? null
      : {
          id: Number(row.release_id),
          name: str(row.holder),
          reason: str(row.release_reason),
          startedAt: Number(row.started_at),
          expiresAt: num(row.expires_at),
          by: by(row.release_by),
          ...(row.release_locks == null ? {} : { locks: JSON.parse(String(row.release_locks)) as string[] }),
          ...(row.release_version == null ? {} : { version: String(row.release_version) }),
        };
  const block: Block | null =
    row.blocked_since === null
      ? null
      : {
          name: str(row.blocked_by),
          reason: str(row.block_reason),
          since: Number(row.blocked_since),
          by: by(row.block_by),
        };
  const releases = first ? [first, ...otherReleases(row.other_releases)] : [];
  const entry: Entry = { releases, block, version: Number(row.version ?? 0) };
  if (row.released != null) entry.released = JSON.parse(String(row.released)) as Released;
  return entry;
}

// A lock with a limit keeps its oldest release in the row's columns, as every lock always has (so rows of
// the previous version read unchanged), and the releases after it as a JSON list in `other_releases`.
const otherReleases = (v: string | number | null | undefined): Release[] =>
  v == null || v === "" ? [] : (JSON.parse(String(v)) as Release[]);

/** Rows as read (the root's row carries the id counter) into the stored state. */
export function toStored(rows: LockRow[]): Stored {
  const entries = new Map<string, Entry>();
  let lastId = 0;
  for (const row of rows) {
    const name = str(row.name);
    if (name === ROOT) lastId = Number(row.last_id);
    entries.set(name, toEntry(row));
  }
  return { lastId, entries };
}

/** The columns of a lock's row after `name` and `last_id`, in the order both stores write them. */
export function toColumns(e: Entry): (string | number | null)[] {
  const r = e.releases[0];
  const b = e.block;
  return [
    r?.id ?? null,
    r?.name ?? null,
    r?.reason ?? null,
    r?.startedAt ?? null,
    r?.expiresAt ?? null,
    b?.name ?? null,
    b?.reason ?? null,
    b?.since ?? null,
    e.version,
    r?.by ?? null,
    b?.by ?? null,
    e.releases.length > 1 ? JSON.stringify(e.releases.slice(1)) : null,
    r?.locks ? JSON.stringify(r.locks) : null,
    r?.version ?? null,
    e.released ? JSON.stringify(e.released) : null,
  ];
}

export const toEvent = (row: EventRow): Event => ({
  lock: str(row.lock),
  at: Number(row.at),
  kind: str(row.kind) as EventKind,
  releaseId: num(row.release_id),
  name: str(row.name),
  reason: str(row.reason),
  by: by(row.made_by),
  ...(row.status == null ? {} : { status: row.status }),
  ...(row.locks == null ? {} : { locks: JSON.parse(row.locks) as string[] }),
  ...(row.version == null ? {} : { version: row.version }),
});

/** An event's locks as stored: a JSON list when its release holds several, else null. */
export const eventLocks = (e: Event): string | null => (e.locks ? JSON.stringify(e.locks) : null);

/** Whether an event concerns `lock`: on it, or on a lock under it (any of its release's locks). */
export const concerns = (lock: string, e: Event): boolean =>
  (e.locks ?? [e.lock]).some((l) => l === lock || isAncestor(lock, l));

/**
 * The rows a decision must also read beyond those around its locks: every lock of a release among them
 * that holds several, so that ending or renewing it changes all of its rows in the same transaction.
 */
export function otherRowsOf(stored: Stored): string[] {
  const missing = new Set<string>();
  for (const e of stored.entries.values())
    for (const r of e.releases) for (const l of r.locks ?? []) if (!stored.entries.has(l)) missing.add(l);
  return [...missing];
}

/** The rows around every lock of a claim, read by `around`, and the rows their releases also hold, by `exact`. */
export function readClaim(
  claim: readonly string[],
  around: (lock: string) => LockRow[],
  exact: (names: string[]) => LockRow[],
): Stored {
  let rows = claim.flatMap(around);
  let stored = toStored(rows);
  // Until every release read is read on all its rows: a release on another row may hold more locks still.
  for (let others = otherRowsOf(stored); others.length > 0; others = otherRowsOf(stored)) {
    rows = [...rows, ...exact(others)];
    const next = toStored(rows);
    if (next.entries.size === stored.entries.size) break; // rows that are not there: nothing more to read
    stored = next;
  }
  return stored;
}
