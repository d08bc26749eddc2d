// The state rules of the release locks, as pure functions: each takes the
// state of one lock (with the locks above and below it in the tree) and a
// request, and returns either a change (the next state and the events that
// record it) or a refusal that says why. Nothing here does I/O, so the same
// rules serve every store and every test.
//
// Locks form a tree by name: `prod/eu` is under `prod`, which is under the
// root (""). A release on a lock excludes releases on its ancestors and its
// descendants; a block on a lock blocks starts on it and everything under it.

import { describeBlock, describeFull, describeHolders, describeRelease, on } from "./words.ts";

export type Release = {
  id: number; // the fencing token: grows with every grant, never reused
  name: string;
  reason: string;
  startedAt: number; // epoch milliseconds
  expiresAt: number | null; // null: the release never expires on its own
  by?: string; // who started it: the named token's `who`; absent without tokens
  locks?: string[]; // every lock it holds, in the order asked, when it holds more than one (a claim of several)
  version?: string; // what its deploy called its build (version=): a newest-first line orders by it (src/version.ts)
};

export type Block = { name: string; reason: string; since: number; by?: string };

/**
 * The last version granted on a newest-first lock (queue = "newest"): kept with the lock's row, written by the
 * start that granted it, so that a start older than it is refused stale whatever the history still holds.
 */
export type Released = { version: string; at: number; name: string };

/** A lock above or below the one decided on, as far as the decision needs it (`released`: as a decision wrote it). */
export type Neighbour = { lock: string; releases: Release[]; block: Block | null; released?: Released };

export type State = {
  lock: string; // the lock this state is of
  lastId: number; // the highest release id ever granted, on any lock: one counter for the whole daemon
  limit: number; // how many releases may hold this lock at once: 1 unless the configuration declares more
  releases: Release[]; // the releases holding it, oldest first
  release: Release | null; // the oldest of them: for a lock whose limit is 1, the one release (see holding)
  block: Block | null;
  around: Neighbour[]; // its ancestors and descendants that hold a release or a block
};

/** The state with these releases holding its lock: `releases` and `release` always agree. */
export const holding = (s: State, releases: Release[]): State => ({ ...s, releases, release: releases[0] ?? null });

import { DEFAULT_LOCK, ROOT } from "./names.ts";

export { DEFAULT_LOCK, ROOT };

/** Whether `above` is an ancestor of `below` (the root is above every other lock). */
export const isAncestor = (above: string, below: string): boolean =>
  above === ROOT
    ? below !== ROOT
    : below.length > above.length && below.startsWith(above) && below[above.length] === "/";

/** Two locks overlap when one is the other, or above or below it: their releases exclude each other. */
export const overlaps = (a: string, b: string): boolean => a === b || isAncestor(a, b) || isAncestor(b, a);

export type EventKind =
  | "started"
  | "stopped"
  | "expired"
  | "renewed"
  | "blocked"
  | "unblocked"
  | "waiting"
  | "left-queue"
  | "abandoned"
  | "frozen" // a freeze window began on the lock (the calendar's, so no one's name)
  | "thawed" // it ended
  | "overridden" // a start went ahead during a freeze: the reason is why, the name and by are who
  | "superseded" // a newer start passed this waiter on a newest-first lock: it left the line (the reason says for whom)
  | "long-running"; // a reminder for webhooks: the release has run this long (the reason says)

export type Event = {
  lock: string;
  at: number;
  kind: EventKind;
  releaseId: number | null;
  name: string; // what the request said
  reason: string;
  by?: string; // whose token made it (the token's `who`); absent without tokens
  status?: string; // what the lock is after it (statusAfter), as a webhook says; absent in events from before
  locks?: string[]; // every lock of its release, when the release holds more than one (`lock` is the first)
  version?: string; // the version the start, waiter or release carried (version=)
};

// What the lock is once an event happened: a word a webhook receiver can switch on.
const STATUS: Record<EventKind, string> = {
  started: "running",
  stopped: "idle",
  expired: "idle",
  abandoned: "idle",
  renewed: "running",
  "long-running": "running",
  overridden: "running",
  blocked: "blocked",
  unblocked: "open",
  frozen: "frozen",
  thawed: "open",
  waiting: "queued",
  "left-queue": "queued",
  superseded: "queued",
};
const ENDS_SOMETHING: ReadonlySet<EventKind> = new Set(["stopped", "expired", "abandoned", "unblocked", "thawed"]);

/**
 * What the lock is after an event of this kind: an event that ends something (a release, a block, a freeze)
 * says what still keeps the lock from starting, a block (its own or from above) before a freeze.
 */
export function statusAfter(kind: EventKind, still: { blocked: boolean; frozen: boolean }): string {
  if (ENDS_SOMETHING.has(kind) && still.blocked) return "blocked";
  if (ENDS_SOMETHING.has(kind) && still.frozen) return "frozen";
  return STATUS[kind];
}

/** Whether a block on `lock` or above it is in the state (the state of `lock`, or of a lock overlapping it). */
export const blockedOver = (s: State, lock: string): boolean =>
  [{ lock: s.lock, block: s.block }, ...s.around].some((n) => n.block && (n.lock === lock || isAncestor(n.lock, lock)));

/** Why a request was answered 0. docs/endpoints.md lists every code. */
export type Reason =
  | "running"
  | "blocked"
  | "frozen"
  | "queued"
  | "not-running"
  | "not-blocked"
  | "wrong-id"
  | "full" // every slot of a lock with a limit is taken
  | "ambiguous" // a stop without an id on a lock that several releases hold
  | "superseded" // a newest-first lock: a newer start of the same claim took this waiter's place
  | "stale" // a newest-first lock: older than the version released there last
  | "timeout"
  | "invalid"
  | "storage"
  | "shutting-down"
  | "too-many-streams"
  | "issuer-unreachable"
  | "unauthorized"
  | "forbidden"
  | "not-found"
  | "unknown-lock"
  | "method-not-allowed"
  | "too-large"
  | "unsupported-media-type";

export type Refusal = { ok: false; reason: Reason; message: string; until?: number }; // until: when a freeze ends
export type Change = {
  ok: true;
  next: State;
  events: Event[];
  release?: Release; // the one it granted or renewed
  locks?: string[]; // the locks a grant holds, in the order asked (a pool's child in place of the pool)
  also?: Neighbour[]; // other locks it wrote, as they are after it: a claim's other locks, a release's other rows
};
export type Outcome = Change | Refusal;

/** Who asks: the name the request gave, and whose token it sent (absent without tokens). */
export type Holder = { name: string; reason: string; by?: string };
/** Who acts on something already there (stops a release, lifts a block). */
export type Actor = { name: string; by?: string };
export type StartRequest = Holder & {
  ttlSeconds: number | null;
  override?: string; // why it may start during a freeze (allowed to whoever may override)
  version?: string; // what the deploy calls its build (version=): a newest-first line keeps only the newest
  urgent?: string; // why it waits ahead of every non-urgent waiter (allowed to whoever may urgent)
  joinedAt?: number; // when it joined the wait line: an override rolls back only what was out by then
};

/** A freeze in force on a lock, as the calendar (src/calendar.ts) says: its words, and when it ends. */
export type Frozen = { reason: string; until: number; message: string };

export const EMPTY_STATE: State = {
  lock: DEFAULT_LOCK,
  lastId: 0,
  limit: 1,
  releases: [],
  release: null,
  block: null,
  around: [],
};
export const emptyState = (lock: string): State => ({ ...EMPTY_STATE, lock });

export const refuse = (reason: Reason, message: string): Refusal => ({ ok: false, reason, message });

/** Refusals that end by themselves, and so are worth waiting out with wait=. */
export const WAITABLE: ReadonlySet<Reason> = new Set(["running", "full", "blocked", "frozen", "queued"]);
export const SHUTTING_DOWN = refuse("shutting-down", "the daemon is shutting down; try again shortly");
export const STORAGE_FAILED = refuse(
  "storage",
  "the release state could not be saved, so nothing changed; see the daemon's log",
);

/** A rule that changes nothing: run it to end a lease that ran out on the way. */
export const unchanged = (s: State): Change => ({ ok: true, next: s, events: [] });

/** The block that stops starts on this lock: its own, else the nearest above it. */
export function blockOn(s: State): { lock: string; block: Block } | null {
  if (s.block) return { lock: s.lock, block: s.block };
  let nearest: Neighbour | null = null;
  for (const n of s.around)
    if (n.block && isAncestor(n.lock, s.lock) && (nearest === null || n.lock.length > nearest.lock.length)) nearest = n;
  return nearest?.block ? { lock: nearest.lock, block: nearest.block } : null;
}

/** A release this lock's would overlap: its own, else one above or below it. */
export function releaseOn(s: State): { lock: string; release: Release } | null {
  if (s.release) return { lock: s.lock, release: s.release };
  return releaseAround(s);
}

/** A release above or below this lock: it keeps this lock from starting whatever this lock's limit. */
export function releaseAround(s: State): { lock: string; release: Release } | null {
  for (const n of s.around) {
    const [release] = n.releases;
    if (release) return { lock: n.lock, release };
  }
  return null;
}

/**
 * Why `req` may not start on this lock now, before anyone waiting is counted: something runs on it or
 * around it, its slots are taken, it is blocked, or frozen (and the request does not override it). Null:
 * it may. `frozen` is what a start records that overrides a freeze.
 */
export function whyNotStart(
  s: State,
  req: StartRequest,
  freeze: () => Frozen | null, // asked only when nothing else refuses: it costs a calendar look
): Refusal | { frozen: Frozen | null } {
  if (s.lock === ROOT)
    return refuse("invalid", "the root holds no release: start a named lock, e.g. /start or /locks/prod/start");
  const running = s.limit === 1 ? releaseOn(s) : releaseAround(s);
  if (running) return refuse("running", describeRelease(running.release, running.lock));
  if (s.releases.length >= s.limit) return refuse("full", describeFull(s.releases, s.limit, s.lock));
  const blocked = blockOn(s);
  if (blocked) return refuse("blocked", describeBlock(blocked.block, blocked.lock));
  const frozen = freeze();
  if (frozen && req.override === undefined) return { ...refuse("frozen", frozen.message), until: frozen.until };
  return { frozen };
}

/** The new release of a start, with the next id: on `locks` when it holds more than one. */
export function newRelease(lastId: number, req: StartRequest, now: number, locks: string[]): Release {
  const expiresAt = req.ttlSeconds === null ? null : now + req.ttlSeconds * 1000;
  const release: Release = {
    id: lastId + 1,
    name: req.name,
    reason: req.reason,
    startedAt: now,
    expiresAt,
    by: req.by,
    ...(req.version === undefined ? {} : { version: req.version }),
  };
  return locks.length > 1 ? { ...release, locks } : release;
}

/** What an urgent start's events say of it: its reason, and why it went in the urgent lane. */
export const withUrgent = (reason: string, urgent: string | undefined): string =>
  urgent === undefined ? reason : `${reason}${reason ? "; " : ""}urgent: ${urgent}`;

/** The events that record a grant: `started`, after `overridden` when it went ahead during a freeze. */
export function startEvents(release: Release, lock: string, req: StartRequest, frozen: Frozen | null): Event[] {
  const started: Event = {
    lock,
    at: release.startedAt,
    kind: "started",
    releaseId: release.id,
    name: req.name,
    reason: withUrgent(req.reason, req.urgent),
    by: req.by,
    ...(release.locks ? { locks: release.locks } : {}),
    ...(release.version === undefined ? {} : { version: release.version }),
  };
  // An override is recorded only when there was a freeze to override, with why and who.
  const overridden: Event[] =
    frozen && req.override !== undefined
      ? [{ ...started, kind: "overridden", reason: `${req.override} (over: ${frozen.message})` }]
      : [];
  return [...overridden, started];
}

/**
 * Grants the release to `holder` if nothing runs, nothing blocks, no freeze is in force (or the
 * request overrides it) and nobody waits ahead.
 */
export function start(
  s: State,
  req: StartRequest,
  now: number,
  waitingAhead: number,
  freeze: () => Frozen | null = () => null,
): Outcome {
  const why = whyNotStart(s, req, freeze);
  if ("ok" in why) return why;
  if (waitingAhead > 0) return refuse("queued", `${waitingAhead} waiting ahead of you`);
  const release = newRelease(s.lastId, req, now, [s.lock]);
  return {
    ok: true,
    next: holding({ ...s, lastId: release.id }, [...s.releases, release]),
    events: startEvents(release, s.lock, req, why.frozen),
    release,
    locks: [s.lock],
  };
}

/**
 * Ends a release holding the lock: with an id, only that release (fencing); without one, the release
 * holding it when it is the only one.
 */
export function stop(s: State, id: number | null, actor: Actor, now: number): Outcome {
  if (!s.release) return refuse("not-running", `no release is running${on(s.lock)}`);
  if (id === null && s.releases.length > 1)
    return refuse(
      "ambiguous",
      `${describeFull(s.releases, s.limit, s.lock)}: give the id of the release to stop, e.g. id=${s.release.id}`,
    );
  const r = id === null ? s.release : s.releases.find((held) => held.id === id);
  if (!r) return refuse("wrong-id", `release #${id} is not running; ${describeHolders(s)}`);
  return {
    ok: true,
    next: holding(
      s,
      s.releases.filter((held) => held !== r),
    ),
    events: [
      { lock: s.lock, at: now, kind: "stopped", releaseId: r.id, name: actor.name, reason: r.reason, by: actor.by },
    ],
  };
}

/** Extends the lease of release `id` to `ttlSeconds` from now. */
export function renew(s: State, id: number, ttlSeconds: number, now: number, by?: string): Outcome {
  const held = s.releases.find((r) => r.id === id);
  if (!held) return refuse("wrong-id", `release #${id} is not running; ${describeHolders(s)}`);
  const release = { ...held, expiresAt: now + ttlSeconds * 1000 };
  return {
    ok: true,
    next: holding(
      s,
      s.releases.map((r) => (r === held ? release : r)),
    ),
    events: [{ lock: s.lock, at: now, kind: "renewed", releaseId: id, name: release.name, reason: release.reason, by }],
    release,
  };
}

export function block(s: State, holder: Holder, now: number): Outcome {
  if (s.block) return refuse("blocked", `already ${describeBlock(s.block, s.lock)}`);
  return {
    ok: true,
    next: { ...s, block: { name: holder.name, reason: holder.reason, since: now, by: holder.by } },
    events: [
      {
        lock: s.lock,
        at: now,
        kind: "blocked",
        releaseId: null,
        name: holder.name,
        reason: holder.reason,
        by: holder.by,
      },
    ],
  };
}

/** Lifts the block on this very lock; one from above stays (see stillBlocked). */
export function unblock(s: State, actor: Actor, now: number): Outcome {
  if (!s.block) {
    const above = blockOn(s);
    const still = above ? `; it is still blocked from above: ${describeBlock(above.block, above.lock)}` : "";
    return refuse("not-blocked", `releasing${on(s.lock)} is not blocked${still}`);
  }
  const reason = s.block.reason;
  return {
    ok: true,
    next: { ...s, block: null },
    events: [{ lock: s.lock, at: now, kind: "unblocked", releaseId: null, name: actor.name, reason, by: actor.by }],
  };
}

/** After an unblock: the block from above that still stops starts on this lock, in words; null when none. */
export function stillBlocked(s: State): string | null {
  const above = blockOn(s);
  return above ? `still blocked from above: ${describeBlock(above.block, above.lock)}` : null;
}

const due = (r: Release, now: number): boolean => r.expiresAt !== null && r.expiresAt <= now;

/** Ends every release in view (this lock's, and those above and below it) whose lease has run out; null when none is due. */
export function expire(s: State, now: number): Change | null {
  const ended = (lock: string, r: Release): Event => ({
    lock,
    at: now,
    kind: "expired",
    releaseId: r.id,
    name: r.name,
    reason: r.reason,
    by: r.by,
  });
  const events: Event[] = [];
  // The releases of one lock that are still within their lease; each that ran out is recorded.
  const kept = (lock: string, releases: Release[]): Release[] => {
    if (!releases.some((r) => due(r, now))) return releases;
    for (const r of releases) if (due(r, now)) events.push(ended(lock, r));
    return releases.filter((r) => !due(r, now));
  };
  const own = kept(s.lock, s.releases);
  const around = s.around.map((n) => {
    const releases = kept(n.lock, n.releases);
    return releases === n.releases ? n : { ...n, releases };
  });
  if (events.length === 0) return null;
  return { ok: true, next: holding({ ...s, around }, own), events };
}

/** Ends a release granted to a client that went away before it could be told: nobody holds it. */
export function abandon(s: State, id: number, now: number): Outcome {
  const r = s.releases.find((held) => held.id === id);
  if (!r) return refuse("wrong-id", `release #${id} is not running`);
  const reason = "the client went away before it was told";
  return {
    ok: true,
    next: holding(
      s,
      s.releases.filter((held) => held !== r),
    ),
    events: [{ lock: s.lock, at: now, kind: "abandoned", releaseId: id, name: r.name, reason, by: r.by }],
  };
}

/** Applies `then` to the state a change left, keeping the events of both. */
export function andThen(first: Change, then: (s: State) => Outcome): Outcome {
  const second = then(first.next);
  if (!second.ok) return second;
  return { ...second, events: [...first.events, ...second.events] };
}
