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
  type Release,
  refuse,
  type StartRequest,
  type State,
  start,
} from "./release.ts";
import type { Store } from "./store.ts";

/** A /start?wait= request in line for the release. */
export type Waiter = StartRequest & { since: number; settle: (o: Outcome) => void };

/** What listeners (log, metrics, live page) hear after every committed change. */
export type Committed = { events: Event[]; before: State; after: State };

type Rule = (s: State, now: number) => Outcome;

export const lock = {
  state: EMPTY_STATE as State,
  queue: [] as Waiter[],
  healthy: true, // false from a failed write until the next one succeeds
  closing: false,
  store: null as Store | null,
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
  transact((s) => ({ ok: true, next: s, events: [] })); // a lease that ran out while the daemon was down ends now
  armExpiry();
}

/** Answers every waiter with shutting-down and stops all timers; the store is closed by its owner. */
export function closeLock(): void {
  lock.closing = true;
  for (const w of lock.queue.splice(0))
    w.settle(refuse("shutting-down", "the daemon is shutting down; try again shortly"));
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
export function transact(rule: Rule): Outcome {
  if (lock.closing) return refuse("shutting-down", "the daemon is shutting down; try again shortly");
  const now = Date.now();
  const expired = expire(lock.state, now);
  const outcome = expired ? andThen(expired, (s) => rule(s, now)) : rule(lock.state, now);
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
  for (const listener of lock.listeners) listener({ events: full.events, before, after: full.next });
  return outcome.ok ? full : outcome;
}

const WAITABLE = new Set(["running", "blocked", "queued"]); // refusals that end by themselves, so are worth waiting out

/** Starts a release, or waits up to `waitSeconds` in line for it (first come, first served). */
export function startOrWait(req: StartRequest, waitSeconds: number, gone: AbortSignal): Outcome | Promise<Outcome> {
  const first = transact((s, now) => start(s, req, now, lock.queue.length));
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
  for (const listener of lock.listeners) listener({ events: [event], before: lock.state, after: lock.state });
}

const servable = (s: State) => lock.queue.length > 0 && s.release === null && s.block === null;

function write(change: Change): Refusal | null {
  try {
    lock.store?.commit(change.next, change.events);
    markHealthy();
    return null;
  } catch (e) {
    markUnhealthy(e as Error);
    return refuse("storage", "the release state could not be saved, so nothing changed; see the daemon's log");
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
    transact((s) => ({ ok: true, next: s, events: [] }));
    armExpiry();
  }, delay);
}

export const runningRelease = (): Release | null => lock.state.release;
