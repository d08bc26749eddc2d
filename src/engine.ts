// The lock engine: the one machine that owns transitions, waiting, expiry and
// hand-over, for every store. A change runs a rule from release.ts inside the
// store's write transaction, on the state as stored there (with any lease that
// ran out before it); only once the store has committed does the module-level
// state object (a cache for reads and the page) change, and listeners hear of
// it. Waiters take the release themselves, first come first served, when a
// commit or another replica wakes them. Everything is keyed by lock name.
import {
  abandon,
  andThen,
  blockedOver,
  type Change,
  DEFAULT_LOCK,
  type Event,
  expire,
  type Frozen,
  isAncestor,
  type Outcome,
  overlaps,
  type Refusal,
  ROOT,
  refuse,
  SHUTTING_DOWN,
  type StartRequest,
  type State,
  start as startRule,
  statusAfter,
  unchanged,
  WAITABLE,
} from "./release.ts";
import { type FindAround, indexAround } from "./store/around.ts";
import {
  type Committed,
  type Decide,
  type Decision,
  type Entry,
  forgets,
  type Mark,
  type NextMarks,
  type Queued,
  type Room,
  type Store,
  type Stored,
  scopeOf,
  type TransactOptions,
} from "./store/store.ts";

export type { Committed, Queued, Room };

/** A transition: the state as stored, the store's time, and how many wait ahead of the caller. */
export type Rule = (s: State, now: number, waitingAhead: number) => Outcome;

/** Time as the engine sees it; tests inject one that moves only when they move it. */
export type Clock = { now(): number; after(ms: number, run: () => unknown): () => void };

const MAX_TIMER_MS = 24 * 3600 * 1000; // setTimeout overflows past 2^31 ms: long timers re-arm daily
export const systemClock: Clock = {
  now: Date.now,
  after(ms, run) {
    const timer = setTimeout(run, Math.min(Math.max(ms, 0), MAX_TIMER_MS));
    return () => clearTimeout(timer);
  },
};

/** What listeners (log, metrics, live page) hear: a committed change, ours or another replica's. */
export type Heard = Committed & { remote: boolean };

type Waiter = { id: number; lock: string; woke: boolean; wake: () => void };

export { DEFAULT_LOCK, ROOT };

/** The module-level state object: what the store last committed or said, for every lock it knows. */
export const engine = {
  store: null as Store | null,
  clock: systemClock,
  known: { lastId: 0, entries: new Map<string, Entry>() } as Stored, // the cache that reads are answered from
  scopes: new Map<string, State>(), // each lock's state with its neighbours, worked out once per change
  expiries: new Map<string, () => void>(), // lease timers, by lock
  waiters: new Map<number, Waiter>(), // by their place in the line
  committing: 0, // commits asked for and not yet answered: until they are, memory may be out of date
  heard: 0, // commits heard so far: a read that overlapped one may be older than it
  listeners: [] as ((h: Heard) => void)[],
  closing: false,
  // How many releases may hold a lock at once: the configuration's [[lock]] tables, read at each decision.
  limitOf: ((_lock: string) => 1) as (lock: string) => number,
  // The freeze in force on a lock at a time: the calendar's answer (src/freezes.ts), none until it is set.
  frozen: ((_lock: string, _now: number) => null) as (lock: string, now: number) => Frozen | null,
};

/** Lets the calendar say which locks are frozen when; starts ask it at the store's time. */
export function useCalendar(frozen: (lock: string, now: number) => Frozen | null): void {
  engine.frozen = frozen;
}

const store = (): Store => {
  if (!engine.store) throw new Error("the engine has no store: call openEngine first");
  return engine.store;
};

/**
 * Reads every lock and ends the leases that ran out while the daemon was down. Says what the
 * default lock held (with the root's block) before, and what it ended.
 */
export async function openEngine(
  s: Store,
  clock: Clock = systemClock,
  limitOf: (lock: string) => number = () => 1,
): Promise<{ state: State; expired: Event[] }> {
  engine.store = s;
  engine.clock = clock;
  engine.limitOf = limitOf;
  engine.known = { lastId: 0, entries: new Map() };
  forgetScopes();
  for (const cancel of engine.expiries.values()) cancel();
  engine.expiries.clear();
  engine.closing = false;
  s.watch((lock, events) => void heardFromElsewhere(lock, events));
  try {
    const all = await s.readAll();
    remember(all.entries, all.lastId);
  } catch {} // a database away at start-up: unknown until it is back
  const before = state(DEFAULT_LOCK);
  const expired: Event[] = [];
  for (const [lock, e] of [...engine.known.entries])
    if (expiryDue(e)) expired.push(...((await commit(lock, unchanged)).committed?.events ?? []));
  return { state: before, expired };
}

export function onCommit(listener: (h: Heard) => void): void {
  engine.listeners.push(listener);
}

/** The lock's state, with the locks above and below it, as last committed or read: for /status, /metrics and the page. */
export function state(lock: string = DEFAULT_LOCK): State {
  let s = engine.scopes.get(lock);
  if (!s) {
    s = scopeWithLimit(lock, engine.known);
    if (engine.scopes.size >= 4096) engine.scopes.clear(); // reads of many names that were never used stay bounded
    engine.scopes.set(lock, s);
  }
  return s;
}

/** Every lock the engine knows of, by name. */
export const locks = (): string[] => [...engine.known.entries.keys()];

/**
 * What a read answer is rendered from: every lock it shows, its neighbours and the id counter, as of
 * one moment after the request arrived.
 */
export type Snapshot = { state(lock: string): State; locks(): string[] };

// On a store no other process writes, the cache is what is committed, changed in one step per commit.
const CACHE: Snapshot = { state, locks };

// The store knows no limits: each state the engine reads or decides on gets its lock's from the configuration.
const withLimit = (s: State): State => {
  const limit = engine.limitOf(s.lock);
  return limit === s.limit ? s : { ...s, limit };
};
const scopeWithLimit = (lock: string, stored: Stored): State =>
  withLimit(scopeOf(lock, stored, stored === engine.known ? aroundKnown() : undefined));

// The cache's locks indexed by the names above them, built at the first read after a change (see around.ts).
let knownAround: FindAround | null = null;
const aroundKnown = (): FindAround => {
  knownAround ??= indexAround(engine.known.entries);
  return knownAround;
};

// The cache changed: every lock's state is worked out again from it when next read.
function forgetScopes() {
  engine.scopes.clear();
  knownAround = null;
}

const snapshotOf = (stored: Stored): Snapshot => ({
  state: (lock) => scopeWithLimit(lock, stored),
  locks: () => [...stored.entries.keys()],
});

/**
 * A snapshot for a read answer about `lock` (ROOT: every lock). On a shared store, one read of the rows,
 * never the cache: there each lock keeps the version its last read brought, and the counter is the
 * highest any read brought, so the cache can pair a lock from before a grant with the counter after it.
 * Rejects when the store cannot be read.
 */
export function snapshot(lock: string = DEFAULT_LOCK): Snapshot | Promise<Snapshot> {
  if (store().exclusive) return CACHE;
  return readAfresh(lock).then(snapshotOf);
}

/** The state a change left, as its own transaction read and wrote it: a snapshot of its lock and the locks around it. */
export function snapshotAfter(next: State): Snapshot {
  const entries = new Map<string, Entry>([[next.lock, { releases: next.releases, block: next.block, version: 0 }]]);
  for (const n of next.around) entries.set(n.lock, { releases: n.releases, block: n.block, version: 0 });
  return snapshotOf({ lastId: next.lastId, entries });
}
export const isKnown = (lock: string): boolean => engine.known.entries.has(lock);

/** Who waits, in order: for `lock` alone when given. */
export const waiting = (lock?: string): Queued[] => {
  const line = engine.store ? store().waiting() : [];
  return lock === undefined ? line : (lineByLock(line).get(lock) ?? []);
};

// The line split by lock, once for each line: a store gives a new array each time its line changes, so
// reads of many locks (a status read, /locks) between two changes do not each walk the whole line.
let byLock: { line: Queued[]; locks: Map<string, Queued[]> } | null = null;
function lineByLock(line: Queued[]): Map<string, Queued[]> {
  if (byLock?.line !== line) {
    const locks = new Map<string, Queued[]>();
    for (const w of line) {
      const list = locks.get(w.lock);
      if (list) list.push(w);
      else locks.set(w.lock, [w]);
    }
    byLock = { line, locks };
  }
  return byLock.locks;
}

// Asked only while memory is current, so of a store that keeps its line here and counts it as it changes.
const waitingAhead = (lock: string): number => {
  const s = store();
  if (s.ahead) return s.ahead(lock);
  let n = 0;
  for (const w of s.waiting()) if (overlaps(w.lock, lock)) n++;
  return n;
};

/**
 * Runs a rule and commits what it changed. A refusal that changes nothing is decided from
 * memory when no other process can write the store and no commit is on its way (it joins
 * that commit instead, to be decided after what it changes); every change is decided by the
 * store, inside its write transaction, from what is stored.
 */
export function change(lock: string, rule: Rule, room?: Room, gone?: AbortSignal): Outcome | Promise<Outcome> {
  const refused = refusalFromMemory(lock, rule);
  if (refused) return refused;
  const s = store();
  if (!memoryIsCurrent(s) && s.peek) return refuseFromCommitted(s, lock, rule, room, gone);
  return commit(lock, rule, { room }, gone).then((d) => d.outcome);
}

// The outcome of a rule that would change nothing, when memory is what is stored; null when the store decides.
function refusalFromMemory(lock: string, rule: Rule): Outcome | null {
  if (engine.closing) return SHUTTING_DOWN;
  if (!memoryIsCurrent(store())) return null;
  const { outcome, change } = withExpiry(rule)(state(lock), engine.clock.now(), waitingAhead(lock));
  return change ? null : outcome;
}

// Shared stores: a refusal that changes nothing is decided on one plain read of what is committed (a
// correct answer as of that read); anything else is decided again inside the write transaction.
async function refuseFromCommitted(
  s: Store,
  lock: string,
  rule: Rule,
  room?: Room,
  gone?: AbortSignal,
): Promise<Outcome> {
  try {
    const { stored, ahead, now } = await (s.peek as NonNullable<Store["peek"]>)(lock);
    const { outcome, change } = withExpiry(rule)(scopeWithLimit(lock, stored), now, ahead);
    if (!outcome.ok && !change && !engine.closing) return outcome;
  } catch {} // the transaction says what is wrong
  return (await commit(lock, rule, { room }, gone)).outcome;
}

/**
 * Starts a release, or waits up to `waitSeconds` in line for it: joining the line is part of the
 * same transaction as the refused attempt, so nobody can slip in between. A client that goes
 * away is never left holding a release it was not told of.
 */
export function start(
  lock: string,
  req: StartRequest,
  waitSeconds: number,
  gone: AbortSignal,
  stillAllowed: () => Refusal | null = () => null, // asked at each attempt: a reload may have revoked the caller's token
  room?: Room, // how many lock names may be stored, for the caller's token
): Outcome | Promise<Outcome> {
  const rule: Rule = (s, now, ahead) => stillAllowed() ?? startRule(s, req, now, ahead, () => engine.frozen(lock, now));
  if (waitSeconds === 0 || engine.closing) {
    const refused = refusalFromMemory(lock, rule); // the common case
    if (refused) return refused;
    return (change(lock, rule, room, gone) as Promise<Outcome>).then((o) => keepOnlyIfHeard(lock, o, gone));
  }
  if (memoryIsCurrent(store())) {
    const { outcome } = withExpiry(rule)(state(lock), engine.clock.now(), waitingAhead(lock));
    if (!outcome.ok && !WAITABLE.has(outcome.reason)) return outcome; // nothing to wait for
  }
  return commit(lock, rule, { join: req, room }, gone).then((d) => {
    if (d.outcome.ok) return keepOnlyIfHeard(lock, d.outcome, gone);
    if (!d.joined) return d.outcome;
    return waitInLine(lock, rule, d.joined.id, d.outcome, waitSeconds, gone, room);
  });
}

const WENT_AWAY = refuse("timeout", "the client went away");

async function waitInLine(
  lock: string,
  rule: Rule,
  self: number,
  first: Outcome,
  waitSeconds: number,
  gone: AbortSignal,
  room: Room | undefined,
): Promise<Outcome> {
  const deadline = engine.clock.now() + waitSeconds * 1000;
  const waiter: Waiter = { id: self, lock, woke: false, wake: () => {} };
  const cancelDeadline = engine.clock.after(waitSeconds * 1000, () => wake(waiter));
  const onGone = () => wake(waiter);
  gone.addEventListener("abort", onGone);
  let cancelThaw = () => {}; // a freeze ending commits nothing: a timer wakes the waiter then
  let latest = first; // the last refusal it was given
  engine.waiters.set(self, waiter);
  try {
    for (;;) {
      if (engine.closing) return await leave(lock, self, "shutting down", SHUTTING_DOWN);
      if (gone.aborted) return await leave(lock, self, "disconnected", WENT_AWAY);
      if (engine.clock.now() >= deadline) {
        const holds = await whatHoldsItNow(lock, rule, self, latest);
        return await leave(lock, self, "timed out", refuse("timeout", `waited ${waitSeconds}s; ${holds}`));
      }
      waiter.woke = false;
      // The commit reads the sockets first: a client that went away as the release came free is
      // seen then, and leaves the line (at the top of the loop) rather than being handed it.
      const attempt = await commit(lock, rule, { self, room }, gone);
      if (attempt.outcome.ok) return keepOnlyIfHeard(lock, attempt.outcome, gone);
      if (gone.aborted || engine.closing) continue;
      latest = attempt.outcome;
      // No longer allowed (its token was revoked while it waited): it leaves the line with that answer.
      if (attempt.outcome.reason === "unauthorized" || attempt.outcome.reason === "forbidden")
        return await leave(lock, self, "its token no longer allows it", attempt.outcome);
      const { until } = attempt.outcome;
      if (until !== undefined) {
        cancelThaw();
        // The calendar's thawed event wakes it as it commits; this is the fallback if that is late or fails.
        cancelThaw = engine.clock.after(until - engine.clock.now() + THAW_FALLBACK_MS, () => wake(waiter));
      }
      if (!waiter.woke) await new Promise<void>((resolve) => (waiter.wake = resolve));
    }
  } finally {
    cancelDeadline();
    cancelThaw();
    gone.removeEventListener("abort", onGone);
    engine.waiters.delete(self);
  }
}

const THAW_FALLBACK_MS = 1000;

// The words of a timeout: what keeps the waiter out at this moment (the release that refused it as it
// joined may have ended long ago, and a freeze or a block taken its place), decided by the rule on the
// state as it is now; the last refusal when the lock came free just as the wait ran out.
async function whatHoldsItNow(lock: string, rule: Rule, self: number, latest: Outcome): Promise<string> {
  if (!store().exclusive) await refresh(lock).catch(() => {}); // another replica may have changed it
  const ahead = store()
    .waiting()
    .filter((w) => w.id < self && overlaps(w.lock, lock)).length;
  const { outcome } = withExpiry(rule)(state(lock), engine.clock.now(), ahead);
  const refusal = outcome.ok ? latest : outcome;
  return refusal.ok ? "" : refusal.message;
}

// Bun runs the immediates queued before a turn of its event loop ahead of reading the sockets, and
// those queued while they run after it: the second of two immediates comes after the sockets were read.
const socketsRead = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)));

// Every commit on the lock, another replica's change, the deadline and the client going away
// wake a waiter; one that comes while it is busy trying is not lost (`woke`).
function wake(w: Waiter) {
  w.woke = true;
  const resolve = w.wake;
  w.wake = () => {};
  resolve();
}

async function leave(lock: string, self: number, why: string, answer: Outcome): Promise<Outcome> {
  const committed = await store().leave(lock, self, why);
  if (committed) heard(committed, false);
  return answer;
}

// A grant is only kept if its client is still there to hear it: otherwise it ends at once
// (`abandoned`). The event loop reads the sockets once more first, so a client that reset its
// connection as the grant was committed (often in the same turn as its request) is seen. A 1
// lost on the wire after this point cannot be seen: a lease bounds it.
async function keepOnlyIfHeard(lock: string, granted: Outcome, gone: AbortSignal): Promise<Outcome> {
  if (!granted.ok) return granted;
  await socketsRead();
  if (!gone.aborted) return granted;
  const id = granted.release?.id;
  if (id !== undefined) await abandonUntilSaved(lock, id);
  return WENT_AWAY;
}

// While storage fails the abandon is tried again each second, as a lease's end is: a release nobody
// was told of must not stay held. It stops once saved, or once that release is no longer held.
async function abandonUntilSaved(lock: string, id: number): Promise<void> {
  const { outcome } = await commit(lock, (s, now) => abandon(s, id, now));
  if (!outcome.ok && outcome.reason === "storage" && !engine.closing)
    engine.clock.after(1000, () => abandonUntilSaved(lock, id));
}

/**
 * Records something that happens by the clock (a freeze's boundary, a long-running reminder) once
 * across replicas and restarts; false when it was recorded before (or could not be written: the
 * caller tries again).
 */
export async function recordOnce(mark: Mark, events: Event[]): Promise<boolean> {
  if (engine.closing) return false;
  const committed = await store().mark(mark, events);
  if (committed) heard(committed, false);
  return committed !== null;
}

/** Records what `next` decides follows the latest mark of a series on a lock (see Store.markNext); false when nothing was. */
export async function recordNext(series: string, lock: string, next: NextMarks): Promise<boolean> {
  if (engine.closing) return false;
  const committed = await store().markNext(series, lock, next);
  if (committed) heard(committed, false);
  return committed !== null;
}

/** The locks whose latest mark of a series is of a kind (see Store.locksMarked). */
export const locksMarked = (series: string, kind: string): Promise<string[]> => store().locksMarked(series, kind);

/** Whether the calendar ever recorded a boundary of this window here. */
export const windowKnown = (window: string): Promise<boolean> => store().marked(window);

// What memory holds is what is stored: no other process writes the store, and nothing is being committed.
const memoryIsCurrent = (s: Store): boolean => s.exclusive && engine.committing === 0;

/** Commits through the store, then updates the cache and tells listeners. */
async function commit(lock: string, rule: Rule, options: TransactOptions = {}, gone?: AbortSignal): Promise<Decision> {
  engine.committing++;
  let decision: Decision;
  try {
    // Nothing is started for a client that cannot hear the answer. The sockets are read once more
    // first: a client whose request side is already closed (a half-close), or who sent another
    // request behind this one (pipelining, which Bun answers by closing the connection), is seen as
    // gone here, before anything is decided, rather than granted a release that must then be
    // abandoned. Every commit waits alike, so none overtakes one asked before it.
    await socketsRead();
    if (gone?.aborted) return { outcome: WENT_AWAY, committed: null, joined: null };
    decision = await store().transact(lock, withExpiry(rule), options);
  } finally {
    engine.committing--;
  }
  if (decision.committed) heard(decision.committed, false);
  else if (!decision.outcome.ok && decision.outcome.reason === "storage")
    storageFailure(store().health().problem ?? "the store did not say why");
  return decision;
}

// A rule, after ending any lease that ran out before it: the refusal may carry that change.
const withExpiry =
  (rule: Rule): Decide =>
  (asStored, now, ahead) => {
    const stored = withLimit(asStored);
    const expired = expire(stored, now);
    const outcome = expired ? andThen(expired, (s) => rule(s, now, ahead)) : rule(stored, now, ahead);
    const change: Change | null = outcome.ok ? outcome : expired;
    return { outcome, change: change && change.events.length > 0 ? withStatus(change) : null };
  };

// Each event with what its lock is after the change (for webhooks, which send it later): blocked from the
// state the change leaves, frozen from the calendar at the event's time.
const withStatus = (c: Change): Change => ({
  ...c,
  events: c.events.map((e) => ({
    ...e,
    status: statusAfter(e.kind, { blocked: blockedOver(c.next, e.lock), frozen: engine.frozen(e.lock, e.at) !== null }),
  })),
});

function heard(c: Committed, remote: boolean) {
  engine.heard++;
  remember(c.entries, c.after?.lastId ?? engine.known.lastId);
  for (const listener of engine.listeners) listener({ ...c, remote });
  wakeWaiters(c.lock);
}

// The cache only moves forward: an older answer that arrives late never overwrites a newer one.
function remember(entries: Map<string, Entry>, lastId: number) {
  if (lastId > engine.known.lastId) engine.known.lastId = lastId;
  for (const [lock, entry] of entries) {
    const cached = engine.known.entries.get(lock);
    if (cached && entry.version < cached.version) continue;
    if (forgets(lock, entry)) engine.known.entries.delete(lock);
    else engine.known.entries.set(lock, entry);
    armExpiry(lock);
  }
  forgetScopes();
}

/**
 * Lets the waiters try again that a change on `lock` (undefined: the calendar, any lock) can let through:
 * those whose lock overlaps it and that no earlier waiter overlaps. Any other is refused `queued` until the
 * one ahead of it is served or leaves, and that commit wakes it in turn, so a change wakes one waiter per
 * line, not the whole line.
 */
export function wakeWaiters(lock?: string) {
  if (engine.waiters.size === 0) return;
  // Nobody waits for a lock overlapping it (a line kept here counts that without a walk): nothing to wake.
  if (lock !== undefined && store().ahead?.(lock) === 0) return;
  const passed = new Set<string>(); // the locks of the waiters ahead so far
  for (const q of store().waiting()) {
    const concerned = lock === undefined || overlaps(q.lock, lock);
    if (concerned && !aheadOf(q, passed)) {
      const w = engine.waiters.get(q.id);
      if (w) wake(w);
    }
    // Every later waiter the change concerns overlaps this one, so is behind it: the walk ends here, and a
    // hand-off looks at the head of the line, however long it is.
    if (lock !== undefined && (q.lock === lock || isAncestor(q.lock, lock))) return;
    passed.add(q.lock);
  }
}

const aheadOf = (q: Queued, passed: Set<string>): boolean => {
  for (const l of passed) if (overlaps(l, q.lock)) return true;
  return false;
};

// Another replica changed something (or the poll came round): read afresh, then let waiters try.
async function heardFromElsewhere(lock: string, events: Event[]) {
  await refresh(lock).catch(() => {});
  if (events.length) {
    const s = state(lock);
    for (const listener of engine.listeners)
      listener({ lock, events, before: s, after: s, entries: new Map(), remote: true });
  }
  wakeWaiters(lock);
  for (const [name, e] of engine.known.entries) if (overlaps(name, lock) && expiryDue(e)) void change(name, unchanged);
}

/** Reads the state around a lock from the store; with replicas, another may have changed it a moment ago. */
export async function refresh(lock: string = DEFAULT_LOCK): Promise<void> {
  await readAfresh(lock);
}

// One read of the rows around `lock`, remembered (the cache moves forward) and given back whole.
async function readAfresh(lock: string): Promise<Stored> {
  const heardBefore = engine.heard;
  const stored = await store().read(lock);
  remember(stored.entries, stored.lastId);
  // A lock another replica forgot is missing from the read: it is forgotten here too. Not when a commit was
  // heard during the read, which may have stored a name the read began too early to see (the next one will).
  if (engine.heard === heardBefore) {
    for (const name of [...engine.known.entries.keys()])
      if (overlaps(name, lock) && !stored.entries.has(name)) {
        engine.known.entries.delete(name);
        armExpiry(name);
      }
    forgetScopes();
  }
  return stored;
}

// When the first lease of a lock's releases runs out; null when none of them has one.
const firstExpiry = (e: Entry | undefined): number | null => {
  let first: number | null = null;
  for (const r of e?.releases ?? [])
    if (r.expiresAt !== null && (first === null || r.expiresAt < first)) first = r.expiresAt;
  return first;
};

const expiryDue = (e: Entry | undefined): boolean => {
  const at = firstExpiry(e);
  return at !== null && at <= engine.clock.now();
};

// Ends the lease when it runs out; while storage fails, tries again each second.
function armExpiry(lock: string) {
  engine.expiries.get(lock)?.();
  engine.expiries.delete(lock);
  const at = firstExpiry(engine.known.entries.get(lock));
  if (at === null || engine.closing) return;
  const cancel = engine.clock.after(Math.max(at - engine.clock.now(), 0), async () => {
    engine.expiries.delete(lock);
    await change(lock, unchanged);
    if (expiryDue(engine.known.entries.get(lock)) && !engine.expiries.has(lock) && !engine.closing)
      engine.expiries.set(
        lock,
        engine.clock.after(1000, () => armExpiry(lock)),
      );
  });
  engine.expiries.set(lock, cancel);
}

/** At shutdown: every waiter leaves the line (recorded) and is answered shutting-down; timers stop. */
export async function closeEngine(): Promise<void> {
  engine.closing = true;
  for (const cancel of engine.expiries.values()) cancel();
  engine.expiries.clear();
  const gone = new Promise<void>((resolve) => {
    const check = () => (engine.waiters.size === 0 ? resolve() : setTimeout(check, 10));
    check();
  });
  for (const w of engine.waiters.values()) wake(w);
  await Promise.race([gone, Bun.sleep(1500)]);
}

export type Health = { ok: boolean; known: boolean; problem: string | null };

/** Whether changes can be saved now, and whether the state can be read at all. */
export function health(): Health {
  if (engine.closing) return { ok: false, known: true, problem: "shutting down" };
  const h = store().health();
  return { ok: h.writable && h.readable, known: h.readable, problem: h.problem };
}

export const history = (limit: number, lock?: string): Promise<Event[]> => store().history(limit, lock);

export const storeDescription = (): string | null => engine.store?.description ?? null;

// ---- the names the HTTP layer calls today; they act on the default lock ----

export const transact = (rule: Rule, lock: string = DEFAULT_LOCK): Outcome | Promise<Outcome> => change(lock, rule);
export const startOrWait = (req: StartRequest, waitSeconds: number, gone: AbortSignal): Outcome | Promise<Outcome> =>
  start(DEFAULT_LOCK, req, waitSeconds, gone);
export const isHealthy = (): boolean => health().ok;
export const stateKnown = (): boolean => health().known;
export const waitingList = (): Queued[] => waiting();

let storageFailure: (problem: string) => void = () => {};
/** Told each time a change could not be saved, with what the store says is wrong. */
export function onStorageFailure(report: (problem: string) => void): void {
  storageFailure = report;
}

/** A consistent copy of the whole database, taken inside the daemon; null when the store cannot give one. */
export const backup = (): Uint8Array | null => store().backup();
