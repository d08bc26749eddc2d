// What the engine needs from storage, and nothing more: read a lock's state,
// run one decision inside a write transaction and commit what it changed, keep
// the wait line, read the history. Memory, SQLite and PostgreSQL implement it;
// what is peculiar to one of them (a lock file, a probe, heartbeats, LISTEN)
// stays inside that store.
import {
  type Block,
  type Change,
  type Event,
  type EventKind,
  type Holder,
  type Outcome,
  type Release,
  type State,
  WAITABLE,
} from "../release.ts";

/**
 * Decides a transition from the state as stored, the store's time, and how many wait ahead of the
 * caller: the answer, and the change to commit (which a refusal may carry too: a lease that ran out).
 */
export type Decide = (stored: State, now: number, ahead: number) => Verdict;
export type Verdict = { outcome: Outcome; change: Change | null };

/** A change that is on disk (or in the database) now. */
export type Committed = { lock: string; events: Event[]; before: State; after: State; version: number };

/** A waiter as /status shows it. */
export type Queued = { id: number; name: string; reason: string; since: number };

export type TransactOptions = {
  self?: number; // the caller's own place in the wait line: only waiters before it count as ahead
  join?: Holder; // join the wait line in the same transaction when the answer is a refusal worth waiting out
};

export type Decision = {
  outcome: Outcome;
  committed: Committed | null; // null when nothing was written
  joined: Queued | null; // the caller's new place in the wait line
};

/** A lock's state as stored, with a number that grows with every committed change to it. */
export type Stored = { state: State; version: number };

export type Health = {
  writable: boolean; // the last write worked (or the probe since)
  readable: boolean; // the state can be read: false during a database outage, when it is unknown
  problem: string | null; // what is wrong, for /healthz and the log
};

export interface Store {
  readonly description: string; // where state lives, for logs and /status; never a password
  /** True when no other process can change what is stored: a refusal may then be decided from memory. */
  readonly exclusive: boolean;
  health(): Health;
  /** The lock's state as stored; throws StorageError when it cannot be read. */
  read(lock: string): Promise<Stored>;
  /**
   * One write transaction: reads the lock's state, runs `decide` on it, and commits the change it
   * returns (its events, and its next state) atomically. Resolves only once the outcome is known;
   * a failed or unknown commit resolves as the refusal `storage`, never as a change.
   */
  transact(lock: string, decide: Decide, options?: TransactOptions): Promise<Decision>;
  /** Leaves the wait line, recording why; no-op when the waiter already left. Needs no synchronous write. */
  leave(lock: string, waiter: number, why: string): Promise<Committed | null>;
  /** Who waits, in order (another replica's waiters too). */
  waiting(lock: string): Queued[];
  /** Newest first; every lock's events when `lock` is omitted. Throws StorageError when unreadable. */
  history(limit: number, lock?: string): Promise<Event[]>;
  /** Calls `changed` when another process committed a change to `lock` (PostgreSQL replicas). */
  watch(changed: (lock: string, events: Event[]) => void): void;
  /** A consistent copy of the whole database, for `releasestatus backup`; null when the store cannot give one. */
  backup(): Uint8Array | null;
  close(): Promise<void>;
}

/** Start-up problems with the database: the daemon says so and exits 2. */
export class StoreOpenError extends Error {}

/** The store could not be read: the state is unknown. */
export class StorageError extends Error {}

/** Events that change no state: recording them needs no synchronous write. */
export const onlyQueueEvents = (events: Event[]): boolean =>
  events.every((e) => e.kind === "waiting" || e.kind === "left-queue");

/**
 * A wait line kept in this process: right for a store that no other process shares
 * (memory, SQLite held exclusively), where waiters cannot outlive the process anyway.
 */
export class LocalWaitLine {
  private lines = new Map<string, Queued[]>();
  private nextId = 1;

  list(lock: string): Queued[] {
    return this.lines.get(lock) ?? [];
  }

  ahead(lock: string, self: number | undefined): number {
    const line = this.list(lock);
    return self === undefined ? line.length : line.filter((w) => w.id < self).length;
  }

  join(lock: string, who: Holder, now: number): Queued {
    const waiter = { id: this.nextId++, name: who.name, reason: who.reason, since: now };
    this.lines.set(lock, [...this.list(lock), waiter]);
    return waiter;
  }

  leave(lock: string, id: number): Queued | null {
    const line = this.list(lock);
    const waiter = line.find((w) => w.id === id) ?? null;
    if (waiter)
      this.lines.set(
        lock,
        line.filter((w) => w !== waiter),
      );
    return waiter;
  }
}

/** The event that records a waiter joining or leaving the line. */
export const queueEvent = (kind: "waiting" | "left-queue", who: Holder, at: number, reason: string): Event => ({
  at,
  kind,
  releaseId: null,
  name: who.name,
  reason,
});

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
  write: ((next: State, events: Event[], version: number) => void) | null,
): Decision {
  const { outcome, change } = decide(stored.state, now, line.ahead(lock, options.self));
  const joining = !outcome.ok && options.join !== undefined && WAITABLE.has(outcome.reason);
  const events = [...(change?.events ?? [])];
  if (joining && options.join) events.push(queueEvent("waiting", options.join, now, options.join.reason));
  if (events.length === 0) return { outcome, committed: null, joined: null };
  const after = change?.next ?? stored.state;
  const version = change ? stored.version + 1 : stored.version;
  const committed = { lock, events, before: stored.state, after, version };
  if (!write) return { outcome, committed, joined: null };
  write(after, events, version);
  const joined = joining && options.join ? line.join(lock, options.join, now) : null;
  if (outcome.ok && options.self !== undefined) line.leave(lock, options.self);
  return { outcome, committed, joined };
}

/** A lock's row, as SQLite and PostgreSQL return it (PostgreSQL gives big integers as strings). */
export type LockRow = Record<
  | "last_id"
  | "version"
  | "release_id"
  | "holder"
  | "release_reason"
  | "started_at"
  | "expires_at"
  | "blocked_by"
  | "block_reason"
  | "blocked_since",
  string | number | null
>;
export type EventRow = Record<"at" | "kind" | "release_id" | "name" | "reason", string | number | null>;

const num = (v: string | number | null): number | null => (v === null ? null : Number(v));
const str = (v: string | number | null): string => (v === null ? "" : String(v));

export function toStored(row: LockRow): Stored {
  const release: Release | null =
    row.release_id === null
      ? null
      : {
          id: Number(row.release_id),
          name: str(row.holder),
          reason: str(row.release_reason),
          startedAt: Number(row.started_at),
          expiresAt: num(row.expires_at),
        };
  const block: Block | null =
    row.blocked_since === null
      ? null
      : { name: str(row.blocked_by), reason: str(row.block_reason), since: Number(row.blocked_since) };
  return { state: { lastId: Number(row.last_id), release, block }, version: Number(row.version ?? 0) };
}

/** The columns of a lock's row, in the order both stores write them. */
export function toRow(s: State, version: number): (string | number | null)[] {
  const r = s.release;
  const b = s.block;
  return [
    s.lastId,
    r?.id ?? null,
    r?.name ?? null,
    r?.reason ?? null,
    r?.startedAt ?? null,
    r?.expiresAt ?? null,
    b?.name ?? null,
    b?.reason ?? null,
    b?.since ?? null,
    version,
  ];
}

export const toEvent = (row: EventRow): Event => ({
  at: Number(row.at),
  kind: str(row.kind) as EventKind,
  releaseId: num(row.release_id),
  name: str(row.name),
  reason: str(row.reason),
});
