// The state rules of the release lock, as pure functions: each takes the
// current state and a request, and returns either a change (the next state and
// the events that record it) or a refusal that says why. Nothing here does I/O,
// so the same rules serve every store and every test.

export type Release = {
  id: number; // the fencing token: grows with every grant, never reused
  name: string;
  reason: string;
  startedAt: number; // epoch milliseconds
  expiresAt: number | null; // null: the release never expires on its own
};

export type Block = { name: string; reason: string; since: number };

export type State = {
  lastId: number; // the highest release id ever granted
  release: Release | null;
  block: Block | null;
};

export type EventKind =
  | "started"
  | "stopped"
  | "expired"
  | "renewed"
  | "blocked"
  | "unblocked"
  | "waiting"
  | "left-queue"
  | "abandoned";

export type Event = {
  at: number;
  kind: EventKind;
  releaseId: number | null;
  name: string;
  reason: string;
};

/** Why a request was answered 0. The README lists every code. */
export type Reason =
  | "running"
  | "blocked"
  | "queued"
  | "not-running"
  | "not-blocked"
  | "wrong-id"
  | "timeout"
  | "invalid"
  | "storage"
  | "shutting-down"
  | "unauthorized"
  | "forbidden"
  | "not-found"
  | "method-not-allowed"
  | "too-large";

export type Refusal = { ok: false; reason: Reason; message: string };
export type Change = { ok: true; next: State; events: Event[] };
export type Outcome = Change | Refusal;

export type Holder = { name: string; reason: string };
export type StartRequest = Holder & { ttlSeconds: number | null };

export const UNKNOWN_USER = "an unknown user";
export const EMPTY_STATE: State = { lastId: 0, release: null, block: null };

export const refuse = (reason: Reason, message: string): Refusal => ({ ok: false, reason, message });

/** Refusals that end by themselves, and so are worth waiting out with wait=. */
export const WAITABLE: ReadonlySet<Reason> = new Set(["running", "blocked", "queued"]);
export const SHUTTING_DOWN = refuse("shutting-down", "the daemon is shutting down; try again shortly");
export const STORAGE_FAILED = refuse(
  "storage",
  "the release state could not be saved, so nothing changed; see the daemon's log",
);

/** A rule that changes nothing: run it to end a lease that ran out on the way. */
export const unchanged = (s: State): Change => ({ ok: true, next: s, events: [] });

export const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

const who = (name: string): string => name || UNKNOWN_USER;

// A release or block never changes once made, so its words are worked out once:
// a refused start, the commonest request, then costs no date formatting.
const described = new WeakMap<Release | Block, string>();
const once = <T extends Release | Block>(x: T, words: (x: T) => string): string => {
  const known = described.get(x);
  if (known !== undefined) return known;
  const d = words(x);
  described.set(x, d);
  return d;
};

export const describeRelease = (r: Release): string =>
  once(
    r,
    () => `release #${r.id} by ${who(r.name)}${r.reason ? ` (${r.reason})` : ""} running since ${iso(r.startedAt)}`,
  );

export const describeBlock = (b: Block): string =>
  once(b, () => `releasing blocked by ${who(b.name)} since ${iso(b.since)}${b.reason ? `: ${b.reason}` : ""}`);

/** Grants the release to `holder` if nothing runs, nothing blocks and nobody waits ahead. */
export function start(s: State, req: StartRequest, now: number, waitingAhead: number): Outcome {
  if (s.release) return refuse("running", describeRelease(s.release));
  if (s.block) return refuse("blocked", describeBlock(s.block));
  if (waitingAhead > 0) return refuse("queued", `${waitingAhead} waiting ahead of you`);
  const id = s.lastId + 1;
  const expiresAt = req.ttlSeconds === null ? null : now + req.ttlSeconds * 1000;
  const release: Release = { id, name: req.name, reason: req.reason, startedAt: now, expiresAt };
  return {
    ok: true,
    next: { ...s, lastId: id, release },
    events: [{ at: now, kind: "started", releaseId: id, name: req.name, reason: req.reason }],
  };
}

/** Ends the running release; with an id, only if it is that release (fencing). */
export function stop(s: State, id: number | null, name: string, now: number): Outcome {
  if (!s.release) return refuse("not-running", "no release is running");
  if (id !== null && id !== s.release.id)
    return refuse("wrong-id", `release #${id} is not running; ${describeRelease(s.release)}`);
  const r = s.release;
  return {
    ok: true,
    next: { ...s, release: null },
    events: [{ at: now, kind: "stopped", releaseId: r.id, name, reason: r.reason }],
  };
}

/** Extends the lease of release `id` to `ttlSeconds` from now. */
export function renew(s: State, id: number, ttlSeconds: number, now: number): Outcome {
  if (!s.release) return refuse("wrong-id", `release #${id} is not running; no release is running`);
  if (s.release.id !== id) return refuse("wrong-id", `release #${id} is not running; ${describeRelease(s.release)}`);
  const release = { ...s.release, expiresAt: now + ttlSeconds * 1000 };
  return {
    ok: true,
    next: { ...s, release },
    events: [{ at: now, kind: "renewed", releaseId: id, name: release.name, reason: release.reason }],
  };
}

export function block(s: State, holder: Holder, now: number): Outcome {
  if (s.block) return refuse("blocked", `already ${describeBlock(s.block)}`);
  return {
    ok: true,
    next: { ...s, block: { name: holder.name, reason: holder.reason, since: now } },
    events: [{ at: now, kind: "blocked", releaseId: null, name: holder.name, reason: holder.reason }],
  };
}

export function unblock(s: State, name: string, now: number): Outcome {
  if (!s.block) return refuse("not-blocked", "releasing is not blocked");
  const reason = s.block.reason;
  return {
    ok: true,
    next: { ...s, block: null },
    events: [{ at: now, kind: "unblocked", releaseId: null, name, reason }],
  };
}

/** Ends a release whose lease has run out; null when nothing is due. */
export function expire(s: State, now: number): Change | null {
  const r = s.release;
  if (!r || r.expiresAt === null || r.expiresAt > now) return null;
  return {
    ok: true,
    next: { ...s, release: null },
    events: [{ at: now, kind: "expired", releaseId: r.id, name: r.name, reason: r.reason }],
  };
}

/** Ends a release granted to a client that went away before it could be told: nobody holds it. */
export function abandon(s: State, id: number, now: number): Outcome {
  const r = s.release;
  if (!r || r.id !== id) return refuse("wrong-id", `release #${id} is not running`);
  return {
    ok: true,
    next: { ...s, release: null },
    events: [
      { at: now, kind: "abandoned", releaseId: id, name: r.name, reason: "the client went away before it was told" },
    ],
  };
}

/** Applies `then` to the state a change left, keeping the events of both. */
export function andThen(first: Change, then: (s: State) => Outcome): Outcome {
  const second = then(first.next);
  if (!second.ok) return second;
  return { ok: true, next: second.next, events: [...first.events, ...second.events] };
}

/** One human sentence per event: the log line, and the history's text form. */
export function describeEvent(e: Event): string {
  const n = who(e.name);
  const what = e.reason ? `: ${e.reason}` : "";
  switch (e.kind) {
    case "started":
      return `release #${e.releaseId} started by ${n}${what}`;
    case "stopped":
      return `release #${e.releaseId} stopped by ${n}`;
    case "expired":
      return `release #${e.releaseId} by ${n} expired: its lease ran out`;
    case "renewed":
      return `release #${e.releaseId} lease renewed by ${n}`;
    case "blocked":
      return `releasing blocked by ${n}${what}`;
    case "unblocked":
      return `releasing unblocked by ${n}`;
    case "waiting":
      return `${n} is waiting for the release${what}`;
    case "left-queue":
      return `${n} left the queue${what}`;
    case "abandoned":
      return `release #${e.releaseId} by ${n} abandoned: ${e.reason}`;
  }
}
