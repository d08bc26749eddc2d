// The lock engine: the one machine that owns transitions, waiting, expiry and
// hand-over, for every store. A change runs a decision of decide.ts (a rule of
// release.ts on one lock, or a claim's start over several) inside the store's
// write transaction, on the rows as stored there (with any lease that ran out
// before it); only once the store has committed does the instance's cache (for
// reads and the page) change, and listeners hear of it. index.ts creates the one
// instance (createEngine) and hands it to those that use it; nothing here is
// shared between instances.
// Waiters take the release themselves, first come first served (a claim waits
// as one waiter), when a commit or another replica wakes them.
import { claimsOverlap, isPool, poolParent, reach } from "./claim.ts";
import { decideOn, decideStart, type Rule, type Setup } from "./decide.ts";
import {
  abandon,
  blockedOver,
  type Change,
  DEFAULT_LOCK,
  type Event,
  type Frozen,
  type Outcome,
  overlaps,
  type Refusal,
  ROOT,
  refuse,
  SHUTTING_DOWN,
  type StartRequest,
  type State,
  statusAfter,
  unchanged,
  WAITABLE,
} from "./release.ts";
import { type FindAround, indexAround } from "./store/around.ts";
import {
  type Asking,
  ancestorsOf,
  askingOf,
  type Committed,
  type Decide,
  type Decision,
  type Entry,
  type FrozenNow,
  forgets,
  heldByFreeze,
  inServiceOrder,
  type Mark,
  type NextMarks,
  type Queued,
  type Room,
  reachOf,
  type Store,
  type Stored,
  sameReleases,
  scopeOf,
  type TransactOptions,
  waitersAhead,
} from "./store/store.ts";

export type { Committed, Queued, Room, Rule };

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

type Waiter = { id: number; reach: readonly string[]; woke: boolean; wake: () => void };

export { DEFAULT_LOCK, ROOT };

// ---- what every instance shares because it holds no state: constants and helpers over a waiter or a row ----

const WENT_AWAY = refuse("timeout", "the client went away");

// Refusals a waiter cannot wait out: it leaves the line with them (a superseded waiter has left it already).
const ENDS_WAIT: ReadonlySet<string> = new Set(["unauthorized", "forbidden", "stale"]);

const THAW_FALLBACK_MS = 1000;

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

// A waiter waits on the lock it asked for, on each lock its claim may hold, and on the lock a pool takes from.
const waitedOn = (w: Queued): Set<string> =>
  new Set([w.lock, ...(w.reach ?? []), ...(isPool(w.lock) ? [poolParent(w.lock)] : [])]);

// When the first lease of a lock's releases runs out; null when none of them has one.
const firstExpiry = (e: Entry | undefined): number | null => {
  let first: number | null = null;
  for (const r of e?.releases ?? [])
    if (r.expiresAt !== null && (first === null || r.expiresAt < first)) first = r.expiresAt;
  return first;
};

/**
 * What an engine is given at its creation: its store and clock, the configuration's limits and pools (read at
 * each decision: a reload changes them), the calendar's freezes, and whom to tell of a failed write.
 */
export type EngineSetup = {
  store: Store; // where the locks, the line and the history are kept
  clock?: Clock; // the system's, unless a test injects one
  limitOf?: (lock: string) => number; // how many releases may hold a lock at once (1 unless declared)
  childrenOf?: (lock: string) => string[]; // a lock's declared children: what a pool of it may take
  newest?: (lock: string) => boolean; // whether its line keeps only the newest version (queue = "newest")
  storageFailure?: (problem: string) => void; // told each time a change could not be saved, with what is wrong
  frozen?: (lock: string, now: number) => Frozen | null; // the calendar's answer (freezes.ts frozenAt); none without
};

/**
 * What a read answer is rendered from: every lock it shows, its neighbours and the id counter, as of
 * one moment after the request arrived.
 */
export type Snapshot = { state(lock: string): State; locks(): string[] };

export type Health = { ok: boolean; known: boolean; problem: string | null };

// Whether a row holds what it held: a row written only for its version (the root's, when a change forgets a lock's
// row) lets no waiter through, and waking for it would walk every line under the root.
const sameHolding = (before: Entry | undefined, after: Entry): boolean =>
  before !== undefined && sameReleases(before.releases, after.releases) && before.block === after.block;

/**
 * The locks the waiters walked so far may hold, kept so that whether a claim overlaps any of them takes a few
 * lookups (one per lock above each of its locks), not a look at each waiter: a walk of the line stays linear.
 */
class Passed {
  private readonly held = new Set<string>(); // every lock a waiter so far may hold
  private readonly above = new Set<string>(); // every lock above one of those

  add(reach: readonly string[]) {
    for (const lock of reach) {
      this.held.add(lock);
      for (const a of ancestorsOf(lock)) this.above.add(a);
    }
  }

  /** Whether `lock` is held by a waiter so far, or lies under one. */
  covers(lock: string): boolean {
    return this.held.has(lock) || ancestorsOf(lock).some((a) => this.held.has(a));
  }

  /** Whether a claim overlaps a waiter's so far: one of its locks is covered, or lies above a held one. */
  overlaps(reach: readonly string[]): boolean {
    return reach.some((lock) => this.covers(lock) || this.above.has(lock));
  }
}

/**
 * Creates an engine over a store: every operation below works on this instance's cache, line, timers and
 * listeners only. Call `open` once before anything else, and `close` at shutdown.
 */
export function createEngine(setup: EngineSetup) {
  // What the instance holds: its store and setup, and what the store last committed or said, for every lock
  // it knows (the cache reads are answered from), with the timers, waiters and listeners of this process.
  const engine = {
    store: setup.store,
    clock: setup.clock ?? systemClock,
    known: { lastId: 0, entries: new Map<string, Entry>() } as Stored, // the cache that reads are answered from
    scopes: new Map<string, State>(), // each lock's state with its neighbours, worked out once per change
    forgotten: new Map<string, number>(), // the version at which the cache let go of each lock no longer stored
    expiries: new Map<string, () => void>(), // lease timers, by lock
    waiters: new Map<number, Waiter>(), // by their place in the line
    committing: 0, // commits asked for and not yet answered: until they are, memory may be out of date
    heard: 0, // commits heard so far: a read that overlapped one may be older than it
    listeners: [] as ((h: Heard) => void)[],
    closing: false,
    // How many releases may hold a lock at once: the configuration's [[lock]] tables, read at each decision.
    limitOf: setup.limitOf ?? (() => 1),
    // The declared children of a lock ([[lock]] tables named under it): what a pool of it may take.
    childrenOf: setup.childrenOf ?? (() => []),
    // Whether a lock's line keeps only the newest version (queue = "newest" in its [[lock]] table).
    newest: setup.newest ?? (() => false),
    storageFailure: setup.storageFailure ?? (() => {}),
    // The freeze in force on a lock at a time: the calendar's answer (src/freezes.ts).
    frozen: setup.frozen ?? (() => null),
  };

  const store = (): Store => engine.store;

  /**
   * Reads every lock and ends the leases that ran out while the daemon was down. Says what the
   * default lock held (with the root's block) before, and what it ended.
   */
  async function open(): Promise<{ state: State; expired: Event[] }> {
    const s = engine.store;
    s.watch((lock, events, freed) => void heardFromElsewhere(lock, events, freed));
    try {
      const all = await s.readAll();
      remember(all.entries, all.lastId);
    } catch {} // a database away at start-up: unknown until it is back
    const before = state(DEFAULT_LOCK);
    const expired: Event[] = [];
    for (const [lock, e] of [...engine.known.entries])
      if (expiryDue(e)) expired.push(...((await commit(lock, on(lock, unchanged))).committed?.events ?? []));
    return { state: before, expired };
  }

  function onCommit(listener: (h: Heard) => void): void {
    engine.listeners.push(listener);
  }

  /** The lock's state, with the locks above and below it, as last committed or read: for /status, /metrics and the page. */
  function state(lock: string = DEFAULT_LOCK): State {
    let s = engine.scopes.get(lock);
    if (!s) {
      s = scopeWithLimit(lock, engine.known);
      if (engine.scopes.size >= 4096) engine.scopes.clear(); // reads of many names that were never used stay bounded
      engine.scopes.set(lock, s);
    }
    return s;
  }

  /** The declared children of a lock: the members of its pool. */
  const childrenOf = (lock: string): string[] => engine.childrenOf(lock);

  /** Every lock the engine knows of, by name. */
  const locks = (): string[] => [...engine.known.entries.keys()];

  // On a store no other process writes, the cache is what is committed, changed in one step per commit.
  const CACHE: Snapshot = { state, locks };

  // What the decisions ask of the configuration and the calendar, read afresh each time (a reload changes them).
  const SETUP: Setup = {
    limitOf: (lock) => engine.limitOf(lock),
    children: (lock) => engine.childrenOf(lock),
    newest: (lock) => engine.newest(lock),
    frozen: (lock, now) => engine.frozen(lock, now),
    cached: (lock, stored) => (stored === engine.known ? state(lock) : undefined),
  };

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
  function snapshot(lock: string = DEFAULT_LOCK): Snapshot | Promise<Snapshot> {
    if (store().exclusive) return CACHE;
    return readAfresh(lock).then(snapshotOf);
  }

  /** The state a change left, as its own transaction read and wrote it: a snapshot of its lock and the locks around it. */
  function snapshotAfter(next: State): Snapshot {
    const entries = new Map<string, Entry>([[next.lock, { releases: next.releases, block: next.block, version: 0 }]]);
    for (const n of next.around) entries.set(n.lock, { releases: n.releases, block: n.block, version: 0 });
    return snapshotOf({ lastId: next.lastId, entries });
  }
  const isKnown = (lock: string): boolean => engine.known.entries.has(lock);

  /** The lock that holds release `id` as this process last knew (its first lock, for a release of several). */
  function lockOf(id: number): string | null {
    for (const [lock, e] of engine.known.entries)
      for (const r of e.releases) if (r.id === id) return r.locks?.[0] ?? lock;
    return null;
  }

  /**
   * As lockOf, for a release another replica may have granted a moment ago, before this one heard of it: an id
   * past every one this replica has heard of is looked for in one read of every lock.
   */
  async function lockOfRelease(id: number): Promise<string | null> {
    const known = lockOf(id);
    if (known !== null || store().exclusive || id <= engine.known.lastId) return known;
    await refresh(ROOT).catch(() => {});
    return lockOf(id);
  }

  /** Who waits, in order: for `lock` alone when given (a claim of several locks waits on each of them). */
  const waiting = (lock?: string): Queued[] => {
    const line = engine.store ? store().waiting() : [];
    if (inOrder?.line !== line) inOrder = { line, served: inServiceOrder(line) };
    return lock === undefined ? inOrder.served : (lineByLock(inOrder.served).get(lock) ?? []);
  };
  // The line in the order it is served (urgent first), once for each line the store gives.
  let inOrder: { line: Queued[]; served: Queued[] } | null = null;
  // The ids in the line, once for each line.
  let ids: { served: Queued[]; ids: Set<number> } | null = null;
  const idsInLine = (served: Queued[]): Set<number> => {
    if (ids?.served !== served) ids = { served, ids: new Set(served.map((q) => q.id)) };
    return ids.ids;
  };

  // The line by the locks its waiters wait on, once for each line: a store gives a new array each time its line
  // changes, so reads of many locks (a status read, /locks) between two changes do not each walk the whole line.
  let byLock: { line: Queued[]; locks: Map<string, Queued[]> } | null = null;
  function lineByLock(line: Queued[]): Map<string, Queued[]> {
    if (byLock?.line !== line) {
      const locks = new Map<string, Queued[]>();
      for (const w of line)
        for (const lock of waitedOn(w)) {
          const on = locks.get(lock);
          if (on) on.push(w);
          else locks.set(lock, [w]);
        }
      byLock = { line, locks };
    }
    return byLock.locks;
  }

  /**
   * The waiters whose claims overlap `lock` (they may hold it, a lock above it or one below it), in the order they
   * are served: a start on it waits behind them. Indexed once for each line, so that /locks may ask it of every
   * lock without walking the line each time.
   */
  function waitingAround(lock: string): Queued[] {
    const served = waiting();
    if (around?.served !== served) {
      const under = new Map<string, Set<Queued>>(); // by each lock a waiter may hold and each lock above those
      const add = (l: string, w: Queued) => {
        const at = under.get(l);
        if (at) at.add(w);
        else under.set(l, new Set([w]));
      };
      for (const w of served) for (const l of reachOf(w)) for (const a of [l, ...ancestorsOf(l)]) add(a, w);
      around = { served, under, position: new Map(served.map((w, i) => [w, i])) };
    }
    const { under, position } = around;
    const found = new Set(under.get(lock));
    const exactly = lineByLock(served); // those that may hold a lock above it
    for (const a of ancestorsOf(lock)) for (const w of exactly.get(a) ?? []) if (reachOf(w).includes(a)) found.add(w);
    return [...found].sort((a, b) => (position.get(a) ?? 0) - (position.get(b) ?? 0));
  }
  let around: { served: Queued[]; under: Map<string, Set<Queued>>; position: Map<Queued, number> } | null = null;

  // Whether a freeze is in force on any of these locks now: a decision asks it of the waiters it counts.
  const frozenNow: FrozenNow = (locks) => locks.some((l) => engine.frozen(l, engine.clock.now()) !== null);

  const waitingAhead = (claimReach: readonly string[], asking: Asking = {}): number =>
    waitersAhead(store().waiting(), claimReach, undefined, asking, frozenNow);

  /**
   * Runs a rule and commits what it changed. A refusal that changes nothing is decided from
   * memory when no other process can write the store and no commit is on its way (it joins
   * that commit instead, to be decided after what it changes); every change is decided by the
   * store, inside its write transaction, from what is stored.
   */
  function change(lock: string, rule: Rule, room?: Room, gone?: AbortSignal): Outcome | Promise<Outcome> {
    return changeBy(lock, on(lock, rule), { room }, gone);
  }

  // A decision on a lock (or a claim whose first lock it is): refused from memory or from one plain read when
  // it changes nothing, else decided by the store.
  function changeBy(lock: string, decide: Decide, options: TransactOptions, gone?: AbortSignal) {
    const asking = askingOf(options);
    const refused = refusalFromMemory(decide, options.claim ?? [lock], asking);
    if (refused) return refused;
    const s = store();
    // A peek counts every waiter ahead: an urgent start, which only urgent ones are ahead of, and an override, which
    // waiters a freeze stops are not ahead of, are decided by the store.
    if (!memoryIsCurrent(s) && s.peek && options.claim === undefined && !asking.urgent && !asking.override)
      return refuseFromCommitted(s, lock, decide, options, gone);
    return commit(lock, decide, options, gone).then((d) => d.outcome);
  }

  // The outcome of a decision that would change nothing, when memory is what is stored; null when the store decides.
  // The waiters ahead are counted only if the decision asks (a start that nothing else refuses).
  function refusalFromMemory(decide: Decide, claimReach: readonly string[], asking: Asking = {}): Outcome | null {
    if (engine.closing) return SHUTTING_DOWN;
    if (!memoryIsCurrent(store())) return null;
    const ahead = () => waitingAhead(claimReach, asking);
    const { outcome, change } = decide(engine.known, engine.clock.now(), ahead);
    return change ? null : outcome;
  }

  // Shared stores: a refusal that changes nothing is decided on one plain read of what is committed (a
  // correct answer as of that read); anything else is decided again inside the write transaction.
  async function refuseFromCommitted(
    s: Store,
    lock: string,
    decide: Decide,
    options: TransactOptions,
    gone?: AbortSignal,
  ): Promise<Outcome> {
    try {
      const { stored, ahead, now } = await (s.peek as NonNullable<Store["peek"]>)(lock);
      const { outcome, change } = decide(stored, now, () => ahead);
      if (!outcome.ok && !change && !engine.closing) return outcome;
    } catch {} // the transaction says what is wrong
    return (await commit(lock, decide, options, gone)).outcome;
  }

  /**
   * Starts a release, or waits up to `waitSeconds` in line for it: joining the line is part of the
   * same transaction as the refused attempt, so nobody can slip in between. A client that goes
   * away is never left holding a release it was not told of.
   */
  function start(
    claim: string | readonly string[], // one lock, or a claim: several locks and pools (`devices/*`), granted together
    req: StartRequest,
    waitSeconds: number,
    gone: AbortSignal,
    stillAllowed: () => Refusal | null = () => null, // asked at each attempt: a reload may have revoked the caller's token
    room?: Room, // how many lock names may be stored, for the caller's token
  ): Outcome | Promise<Outcome> {
    const names = typeof claim === "string" ? [claim] : claim;
    const lock = names[0] as string;
    const decide = withStatus(decideStart(names, req, SETUP, stillAllowed));
    // One exact lock is decided as any change on it is; a claim reads around every lock it may hold.
    const one = names.length === 1 && !isPool(lock);
    const claimReach = one ? [lock] : reach(names, engine.childrenOf);
    const pools = names.filter(isPool).flatMap((p) => engine.childrenOf(poolParent(p)));
    const newest = newestOf(names);
    // Its lane, whether it overrides a freeze, and how to tell whom a freeze stops: what orders it in the line.
    const lane: TransactOptions = {
      start: true,
      frozen: frozenNow,
      ...(req.urgent === undefined ? {} : { urgent: true }),
      ...(req.override === undefined ? {} : { override: true }),
    };
    const options: TransactOptions = one ? { room, ...lane } : { room, claim: claimReach, freedOf: pools, ...lane };
    if (waitSeconds === 0 || engine.closing) {
      const refused = refusalFromMemory(decide, claimReach, askingOf(options)); // the common case
      if (refused) return refused;
      return (changeBy(lock, decide, options, gone) as Promise<Outcome>).then((o) => keepOnlyIfHeard(o, gone));
    }
    if (memoryIsCurrent(store())) {
      const { outcome } = decide(engine.known, engine.clock.now(), () => waitingAhead(claimReach, askingOf(options)));
      if (!outcome.ok && !WAITABLE.has(outcome.reason)) return outcome; // nothing to wait for
    }
    const inLine = { ...options, claim: claimReach, newest: newest.length > 0 };
    return commit(lock, decide, { ...inLine, join: req }, gone).then((d) => {
      if (d.outcome.ok) return keepOnlyIfHeard(d.outcome, gone);
      if (!d.joined) return d.outcome;
      // From its place in line on, what it overrides is what was out when it joined (see decide.ts `stale`).
      const inLineDecide = withStatus(decideStart(names, { ...req, joinedAt: d.joined.since }, SETUP, stillAllowed));
      return waitInLine(lock, inLineDecide, inLine, d.joined.id, d.outcome, waitSeconds, gone);
    });
  }

  // The exact locks of a claim whose line keeps only the newest version: a pool's members are never compared.
  const newestOf = (names: readonly string[]): string[] => names.filter((n) => !isPool(n) && engine.newest(n));

  async function waitInLine(
    lock: string,
    decide: Decide,
    options: TransactOptions & { claim: readonly string[] },
    self: number,
    first: Outcome,
    waitSeconds: number,
    gone: AbortSignal,
  ): Promise<Outcome> {
    const deadline = engine.clock.now() + waitSeconds * 1000;
    const waiter: Waiter = { id: self, reach: options.claim, woke: false, wake: () => {} };
    const leave = (why: string, answer: Outcome) => leaveLine(lock, options.claim, self, why, answer);
    const cancelDeadline = engine.clock.after(waitSeconds * 1000, () => wake(waiter));
    const onGone = () => wake(waiter);
    gone.addEventListener("abort", onGone);
    let cancelThaw = () => {}; // a freeze ending commits nothing: a timer wakes the waiter then
    let latest = first; // the last refusal it was given
    engine.waiters.set(self, waiter);
    try {
      for (;;) {
        if (engine.closing) return await leave("shutting down", SHUTTING_DOWN);
        if (gone.aborted) return await leave("disconnected", WENT_AWAY);
        if (engine.clock.now() >= deadline) {
          const holds = await whatHoldsItNow(decide, options.claim, self, latest);
          return await leave("timed out", refuse("timeout", `waited ${waitSeconds}s; ${holds}`));
        }
        waiter.woke = false;
        // The commit reads the sockets first: a client that went away as the release came free is
        // seen then, and leaves the line (at the top of the loop) rather than being handed it.
        const attempt = await commit(lock, decide, { ...options, self }, gone);
        if (attempt.outcome.ok) {
          // Out of the line now: those its claim kept back may go, though the locks it took are not theirs (a pool's
          // other child, say).
          wakeWaiters(options.claim);
          return keepOnlyIfHeard(attempt.outcome, gone);
        }
        if (gone.aborted || engine.closing) continue;
        latest = attempt.outcome;
        // A newer start took its place: the store took it out of the line as it passed it.
        if (attempt.outcome.reason === "superseded") return attempt.outcome;
        // No longer allowed (its token was revoked while it waited, or a newer version was released): it
        // leaves the line with that answer.
        if (ENDS_WAIT.has(attempt.outcome.reason))
          return await leave(
            attempt.outcome.reason === "stale" ? "a newer version was released" : "its token no longer allows it",
            attempt.outcome,
          );
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

  // The words of a timeout: what keeps the waiter out at this moment (the release that refused it as it
  // joined may have ended long ago, and a freeze or a block taken its place), decided by the rule on the
  // state as it is now; the last refusal when the lock came free just as the wait ran out.
  async function whatHoldsItNow(
    decide: Decide,
    claimReach: readonly string[],
    self: number,
    latest: Outcome,
  ): Promise<string> {
    // Another replica may have changed it.
    if (!store().exclusive) for (const l of claimReach) await refresh(l).catch(() => {});
    const ahead = () => waitersAhead(store().waiting(), claimReach, self, {}, frozenNow);
    const { outcome } = decide(engine.known, engine.clock.now(), ahead);
    const refusal = outcome.ok ? latest : outcome;
    return refusal.ok ? "" : refusal.message;
  }

  // A waiter leaving lets through the next waiters its claim kept back.
  async function leaveLine(
    lock: string,
    claimReach: readonly string[],
    self: number,
    why: string,
    answer: Outcome,
  ): Promise<Outcome> {
    const committed = await store().leave(lock, self, why);
    if (committed) heard(committed, false);
    wakeWaiters(claimReach);
    return answer;
  }

  // A grant is only kept if its client is still there to hear it: otherwise it ends at once
  // (`abandoned`). The event loop reads the sockets once more first, so a client that reset its
  // connection as the grant was committed (often in the same turn as its request) is seen. A 1
  // lost on the wire after this point cannot be seen: a lease bounds it.
  async function keepOnlyIfHeard(granted: Outcome, gone: AbortSignal): Promise<Outcome> {
    if (!granted.ok) return granted;
    await socketsRead();
    if (!gone.aborted) return granted;
    const id = granted.release?.id;
    const lock = granted.locks?.[0] ?? granted.next.lock;
    if (id !== undefined) await abandonUntilSaved(lock, id);
    return WENT_AWAY;
  }

  // While storage fails the abandon is tried again each second, as a lease's end is: a release nobody
  // was told of must not stay held. It stops once saved, or once that release is no longer held.
  async function abandonUntilSaved(lock: string, id: number): Promise<void> {
    const { outcome } = await commit(
      lock,
      on(lock, (s, now) => abandon(s, id, now)),
    );
    if (!outcome.ok && outcome.reason === "storage" && !engine.closing)
      engine.clock.after(1000, () => abandonUntilSaved(lock, id));
  }

  /**
   * Records something that happens by the clock (a freeze's boundary, a long-running reminder) once
   * across replicas and restarts; false when it was recorded before (or could not be written: the
   * caller tries again).
   */
  async function recordOnce(mark: Mark, events: Event[]): Promise<boolean> {
    if (engine.closing) return false;
    const committed = await store().mark(mark, events);
    if (committed) heard(committed, false);
    return committed !== null;
  }

  /** Records what `next` decides follows the latest mark of a series on a lock (see Store.markNext); false when nothing was. */
  async function recordNext(series: string, lock: string, next: NextMarks): Promise<boolean> {
    if (engine.closing) return false;
    const committed = await store().markNext(series, lock, next);
    if (committed) heard(committed, false);
    return committed !== null;
  }

  /** The locks whose latest mark of a series is of a kind (see Store.locksMarked). */
  const locksMarked = (series: string, kind: string): Promise<string[]> => store().locksMarked(series, kind);

  /** Whether the calendar ever recorded a boundary of this window here. */
  const windowKnown = (window: string): Promise<boolean> => store().marked(window);

  // What memory holds is what is stored: no other process writes the store, and nothing is being committed.
  const memoryIsCurrent = (s: Store): boolean => s.exclusive && engine.committing === 0;

  /** Commits through the store, then updates the cache and tells listeners. */
  async function commit(
    lock: string,
    decide: Decide,
    options: TransactOptions = {},
    gone?: AbortSignal,
  ): Promise<Decision> {
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
      decision = await store().transact(lock, decide, options);
    } finally {
      engine.committing--;
    }
    if (decision.committed) heard(decision.committed, false);
    else if (!decision.outcome.ok && decision.outcome.reason === "storage")
      engine.storageFailure(store().health().problem ?? "the store did not say why");
    return decision;
  }

  // A rule on one lock, after ending any lease that ran out before it (see decide.ts), its events with their status.
  const on = (lock: string, rule: Rule): Decide => withStatus(decideOn(lock, rule, SETUP));

  // Each event with what its lock is after the change (for webhooks, which send it later): blocked from the
  // state the change leaves, frozen from the calendar at the event's time.
  const withStatus =
    (decide: Decide): Decide =>
    (stored, now, ahead) => {
      const { outcome, change } = decide(stored, now, ahead);
      if (!change) return { outcome, change };
      const events = change.events.map((e) => ({
        ...e,
        status: statusAfter(e.kind, {
          blocked: blockedOver(change.next, e.lock),
          frozen: engine.frozen(e.lock, e.at) !== null,
        }),
      }));
      const withEvents: Change = { ...change, events };
      return { outcome: outcome.ok ? { ...outcome, events } : outcome, change: withEvents };
    };

  function heard(c: Committed, remote: boolean) {
    engine.heard++;
    const moved = [...c.entries].filter(([name, e]) => !sameHolding(engine.known.entries.get(name), e));
    remember(c.entries, c.after?.lastId ?? engine.known.lastId);
    for (const listener of engine.listeners) listener({ ...c, remote });
    wakeWaiters([c.lock, ...moved.map(([name]) => name)]);
  }

  // The cache only moves forward: an older answer that arrives late never overwrites a newer one.
  // A read sent before a commit that forgot a lock may arrive after it: the forgotten row's version is kept, so
  // that such a read cannot bring the row back (a name used again starts above it: see changedEntries).
  function remember(entries: Map<string, Entry>, lastId: number) {
    if (lastId > engine.known.lastId) engine.known.lastId = lastId;
    for (const [lock, entry] of entries) {
      const cached = engine.known.entries.get(lock);
      if (cached && entry.version < cached.version) continue;
      if (!cached && entry.version <= (engine.forgotten.get(lock) ?? -1)) continue;
      if (forgets(lock, entry)) {
        engine.known.entries.delete(lock);
        if (engine.forgotten.size >= 4096) engine.forgotten.clear(); // bounded: many names used once
        engine.forgotten.set(lock, entry.version);
      } else engine.known.entries.set(lock, entry);
      armExpiry(lock);
    }
    forgetScopes();
  }

  /**
   * Lets the waiters try again that a change on `locks` (undefined: the calendar, any lock) can let through:
   * those whose claim overlaps them and that no earlier waiter overlaps. Any other is refused `queued` until
   * the one ahead of it is served or leaves, and that commit wakes it in turn, so a change wakes one waiter per
   * line, not the whole line.
   */
  function wakeWaiters(locks?: string | readonly string[]) {
    if (engine.waiters.size === 0) return;
    const changed = typeof locks === "string" ? [locks] : locks;
    const served = waiting(); // in the order it is served: urgent first, then as they joined
    // A waiter no longer in the line was taken out by another's start (superseded): woken to be told so.
    const ids = idsInLine(served);
    for (const w of engine.waiters.values()) if (!ids.has(w.id)) wake(w);
    // The first in line of each claim the change concerns: none served before it overlaps it.
    const passed = new Passed(); // what the waiters ahead so far may hold
    const overrides = served.some((w) => w.override !== undefined); // only then does a freeze change who is ahead
    for (const q of served) {
      const reach = reachOf(q);
      if ((changed === undefined || claimsOverlap(reach, changed)) && !passed.overlaps(reach)) {
        const w = engine.waiters.get(q.id);
        if (w) wake(w);
      }
      // One the freeze stops keeps back no override behind it (see waitersAhead): the next is woken too.
      if (!overrides || !heldByFreeze(q, reach, frozenNow)) passed.add(reach);
      // Once each changed lock is covered by a waiter so far (on it or on a lock above it), every later waiter the
      // change concerns overlaps one ahead of it: the walk ends, and a hand-off looks at the head of the line only.
      if (changed?.every((l) => passed.covers(l))) return;
    }
  }

  // Another replica changed something (or the poll came round): read afresh, then let waiters try.
  async function heardFromElsewhere(lock: string, events: Event[], freed: readonly string[] = []) {
    // A release of several locks changed every one of its rows: each is read afresh.
    const changed = new Set([lock, ...events.flatMap((e) => e.locks ?? [])]);
    for (const l of changed) await refresh(l).catch(() => {});
    if (events.length) {
      const s = state(lock);
      for (const listener of engine.listeners)
        listener({ lock, events, before: s, after: s, entries: new Map(), remote: true });
    }
    // The waiters the change concerns, and those that a waiter it took out of the line kept back.
    wakeWaiters([...changed, ...freed]);
    for (const [name, e] of engine.known.entries)
      if (overlaps(name, lock) && expiryDue(e)) void change(name, unchanged);
  }

  /** Reads the state around a lock from the store; with replicas, another may have changed it a moment ago. */
  async function refresh(lock: string = DEFAULT_LOCK): Promise<void> {
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
  async function close(): Promise<void> {
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

  /** Whether changes can be saved now, and whether the state can be read at all. */
  function health(): Health {
    if (engine.closing) return { ok: false, known: true, problem: "shutting down" };
    const h = store().health();
    return { ok: h.writable && h.readable, known: h.readable, problem: h.problem };
  }

  const history = (limit: number, lock?: string): Promise<Event[]> => store().history(limit, lock);

  const storeDescription = (): string | null => engine.store?.description ?? null;

  /** A consistent copy of the whole database, taken inside the daemon; null when the store cannot give one. */
  const backup = (): Uint8Array | null => store().backup();

  return {
    open,
    close,
    onCommit,
    // reads, from what this process last committed or read
    state,
    locks,
    childrenOf,
    isKnown,
    lockOf,
    lockOfRelease,
    waiting,
    waitingAround,
    snapshot,
    snapshotAfter,
    refresh,
    health,
    history,
    storeDescription,
    backup,
    /** Every lock this process knows, with what holds it, as last committed or read. */
    known: (): ReadonlyMap<string, Entry> => engine.known.entries,
    // changes
    change,
    start,
    wakeWaiters,
    // what happens by the clock (the calendar's boundaries, reminders), recorded once
    recordOnce,
    recordNext,
    locksMarked,
    windowKnown,
    /** Whether it is shutting down: /healthz says so. */
    get closing(): boolean {
      return engine.closing;
    },
    /** The waiters asleep in this process, by their place in the line: tests wait for them. */
    get waiters(): ReadonlyMap<number, { readonly id: number }> {
      return engine.waiters;
    },
    /** Commits asked for and not yet answered. */
    get committing(): number {
      return engine.committing;
    },
  };
}

/** One engine: what createEngine gives. */
export type Engine = ReturnType<typeof createEngine>;
