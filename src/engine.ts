// The release lock as the daemon holds it: the module-level state object, the
// queue of waiting starters, and the one place where a rule's change is
// committed to storage before anyone is told yes.

import {
  andThen,
  type Change,
  EMPTY_STATE,
  type Event,
  expire,
  type Holder,
  type Outcome,
  type Refusal,
  refuse,
  SHUTTING_DOWN,
  STORAGE_FAILED,
  type StartRequest,
  type State,
  start,
  unchanged,
  WAITABLE,
} from "./release.ts";
import type { PostgresLock, Queued } from "./store/postgres.ts";
import type { Store } from "./store/sqlite.ts";

/** A /start?wait= request in line for the release. */
type Waiter = StartRequest & { since: number; settle: (o: Outcome) => void };

/** What listeners (log, metrics, live page) hear after every committed change. */
export type Committed = { events: Event[]; before: State; after: State };

/** A transition: the state, the time (the database's, when shared), and how many wait ahead of the caller. */
export type Rule = (s: State, now: number, waitingAhead: number) => Outcome;

export const lock = {
  state: EMPTY_STATE as State,
  queue: [] as Waiter[],
  healthy: true, // false from a failed write until the next one succeeds
  closing: false,
  store: null as Store | null,
  shared: null as PostgresLock | null, // set instead of store when replicas share PostgreSQL
  listeners: [] as ((c: Committed) => void)[],
  expiryTimer: null as Timer | null,
  probeTimer: null as Timer | null,
  onStorageError: (_e: Error) => {},
};

const MAX_TIMER_MS = 24 * 3600 * 1000; // setTimeout overflows past 2^31 ms; long leases re-arm daily

export function openLock(store: Store, onStorageError: (e: Error) => void): void {
  lock.store = store;
  lock.state = store.load();
  lock.queue = [];
  lock.healthy = true;
  lock.closing = false;
  lock.onStorageError = onStorageError;
  transact(unchanged); // a lease that ran out while the daemon was down ends now
  armExpiry();
}

/** Answers every waiter with shutting-down and stops all timers; the store is closed by its owner. */
export function closeLock(): void {
  lock.closing = true;
  lock.shared?.stopWaiting();
  for (const w of lock.queue.splice(0)) w.settle(SHUTTING_DOWN);
  if (lock.expiryTimer) clearTimeout(lock.expiryTimer);
  if (lock.probeTimer) clearInterval(lock.probeTimer);
}

export function onCommit(listener: (c: Committed) => void): void {
  lock.listeners.push(listener);
}

/**
 * Runs a rule against the current state and commits what it changed, together with
 * any lease that ran out before it and the hand-over to the first waiter after it,
 * as one transaction. Memory changes only once storage has said yes.
 */
export function transact(rule: Rule): Outcome | Promise<Outcome> {
  if (lock.shared) return lock.shared.transact(rule);
  if (lock.closing) return SHUTTING_DOWN;
  const now = Date.now();
  const ahead = lock.queue.length;
  const expired = expire(lock.state, now);
  const outcome = expired ? andThen(expired, (s) => rule(s, now, ahead)) : rule(lock.state, now, ahead);
  const change = outcome.ok ? outcome : expired;
  if (!change || change.events.length === 0) return outcome; // a refusal, or nothing to write: the common, cheap case
  const served = servable(change.next) ? lock.queue[0] : undefined;
  const full = served ? andThen(change, (s) => start(s, served, now, 0)) : change;
  if (!full.ok) return full; // cannot happen: servable() checked what start() requires
  const failure = write(full);
  if (failure) return failure;
  const before = lock.state;
  lock.state = full.next;
  if (served) {
    lock.queue.shift();
    served.settle(full);
  }
  armExpiry();
  publish({ events: full.events, before, after: full.next });
  return outcome.ok ? full : outcome;
}

/** Starts a release, or waits up to `waitSeconds` in line for it (first come, first served). */
export function startOrWait(req: StartRequest, waitSeconds: number, gone: AbortSignal): Outcome | Promise<Outcome> {
  if (lock.shared) return lock.shared.startOrWait(req, waitSeconds, gone);
  const first = transact((s, now, ahead) => start(s, req, now, ahead)) as Outcome;
  if (first.ok || waitSeconds === 0 || !WAITABLE.has(first.reason)) return first;
  return new Promise((resolve) => {
    let timer: Timer | undefined;
    const waiter: Waiter = {
      ...req,
      since: Date.now(),
      settle: (o) => {
        clearTimeout(timer);
        gone.removeEventListener("abort", onGone);
        resolve(o);
      },
    };
    const leave = (why: string, answer: Refusal) => {
      const i = lock.queue.indexOf(waiter);
      if (i < 0) return;
      lock.queue.splice(i, 1);
      record("left-queue", waiter, why);
      waiter.settle(answer);
    };
    const onGone = () => leave("disconnected", refuse("timeout", "the client went away"));
    timer = setTimeout(
      () => leave("timed out", refuse("timeout", `waited ${waitSeconds}s; ${first.message}`)),
      waitSeconds * 1000,
    );
    gone.addEventListener("abort", onGone);
    lock.queue.push(waiter);
    record("waiting", waiter, waiter.reason);
  });
}

/** Writes an event that changes no state (someone joined or left the queue); a failure is only logged. */
function record(kind: "waiting" | "left-queue", who: Holder, reason: string) {
  const event: Event = { at: Date.now(), kind, releaseId: null, name: who.name, reason };
  if (write({ ok: true, next: lock.state, events: [event] })) return;
  publish({ events: [event], before: lock.state, after: lock.state });
}

const servable = (s: State) => lock.queue.length > 0 && s.release === null && s.block === null;

function write(change: Change): Refusal | null {
  try {
    lock.store?.commit(change.next, change.events);
    markHealthy();
    return null;
  } catch (e) {
    markUnhealthy(e as Error);
    return STORAGE_FAILED;
  }
}

function markHealthy() {
  if (lock.healthy) return;
  lock.healthy = true;
  if (lock.probeTimer) clearInterval(lock.probeTimer);
  lock.probeTimer = null;
}

// While storage fails, a harmless write each second tells us when it works again.
function markUnhealthy(e: Error) {
  lock.onStorageError(e);
  lock.healthy = false;
  lock.probeTimer ??= setInterval(() => {
    try {
      lock.store?.probe();
      markHealthy();
    } catch {}
  }, 1000);
}

function armExpiry() {
  if (lock.expiryTimer) clearTimeout(lock.expiryTimer);
  lock.expiryTimer = null;
  const at = lock.state.release?.expiresAt;
  if (at == null || lock.closing) return;
  // while storage fails, retry the expiry each second rather than spinning
  const delay = Math.min(Math.max(lock.healthy ? 0 : 1000, at - Date.now()), MAX_TIMER_MS);
  lock.expiryTimer = setTimeout(() => {
    transact(unchanged);
    armExpiry(); // transact re-arms only when something changed
  }, delay);
}

/** Uses PostgreSQL, shared with other replicas, instead of a local store. */
export function useShared(shared: PostgresLock): void {
  lock.shared = shared;
  lock.state = shared.state ?? lock.state;
}

/** With replicas, reads the state afresh: another replica may have changed it a moment ago. */
export const freshen = (): Promise<void> | null => lock.shared?.refresh() ?? null;

export const isHealthy = (): boolean => (lock.shared ? lock.shared.healthy : lock.healthy) && !lock.closing;

/** Who waits for the release, in order: this daemon's waiters, or every replica's. */
export const waitingList = (): Queued[] => (lock.shared ? lock.shared.waiting : lock.queue);

export const history = (limit: number): Event[] | Promise<Event[]> =>
  lock.shared ? lock.shared.history(limit) : (lock.store?.history(limit) ?? []);

export const storeDescription = (): string | null => lock.shared?.description ?? lock.store?.description ?? null;

/** Tells the listeners (log, metrics, live page) of a committed change. */
export function publish(c: Committed): void {
  for (const listener of lock.listeners) listener(c);
}

/** False while the store cannot be read (a database outage): /status and /history then answer 503 storage. */
export const stateKnown = (): boolean => true;
