// Delivering events to webhooks: at least once, in order, across crashes, and
// never in the way of an answer. The events a change commits are the outbox
// (src/store/store.ts Outbox); each webhook works through them in its own
// loop, one delivery at a time, and its progress is stored. A failure is tried
// again on the Standard Webhooks schedule; 410 Gone disables the webhook until
// the next reload. Long-running reminders are recorded once, like any event.

import { describeLocalTime } from "../calendar.ts";
import type { Clock, Engine } from "../engine.ts";
import { calendarOf } from "../freezes.ts";
import type { Log } from "../log.ts";
import type { Event } from "../release.ts";
import type { Outbox, Pending } from "../store/store.ts";
import { iso, type Told } from "../words.ts";
import { type Message, messageId, render, wants } from "./formats.ts";
import { hearsLock, paceWords, type Webhook } from "./webhook.ts";

/** Waits before attempt 2, 3, …, 10 (attempt 1 is at once); after the 10th failure the event is dropped. */
export const RETRY_SCHEDULE_MS = [5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400].map((s) => s * 1000);
export const ATTEMPT_TIMEOUT_MS = 5_000; // one attempt waits this long at most, then is cancelled
const IDLE_MS = 1_000; // with nothing to send, look again this often (a commit wakes it sooner)
const BATCH = 100;

/**
 * The wait before the next attempt after `failures` failed ones: the schedule with ±10% jitter, or longer
 * when the receiver's Retry-After asks (at most a day; never shorter, so "Retry-After: 0" cannot spend
 * the schedule in seconds); null when the schedule is spent and the event is dropped.
 */
export function nextDelay(failures: number, retryAfterMs: number | null, random: () => number): number | null {
  if (failures > RETRY_SCHEDULE_MS.length) return null;
  const base = RETRY_SCHEDULE_MS[failures - 1] as number;
  const scheduled = Math.round(base * (0.9 + 0.2 * random()));
  return retryAfterMs === null ? scheduled : Math.max(scheduled, Math.min(retryAfterMs, 86_400_000));
}

/** Retry-After as seconds or an HTTP date, in milliseconds from `now`; null when absent or not understood. */
export function retryAfter(header: string | null, now: number): number | null {
  if (header === null) return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim()) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(at - now, 0);
}

export type Result = "delivered" | "failed" | "dropped";

/** What /webhooks and the metrics show of a webhook. */
export type WebhookStatus = {
  label: string;
  format: string;
  disabled: string | null; // why, when a 410 Gone disabled it
  lastSuccess: { at: number; status: number } | null;
  lastFailure: { at: number; status: number | null; error: string } | null;
  backlog: number; // events behind the newest, as of its last look
  looked: boolean; // it has looked at the store at least once: events from then on are its to send
  retryAt: number | null; // when the event it failed to deliver is tried again
  dropped: number; // given up on, ever (stored)
  deliveries: Record<Result, number>; // since this daemon started
};

type Loop = {
  hook: Webhook;
  status: WebhookStatus;
  running: boolean;
  woken: boolean; // a wake that came while it was busy: its next pause ends at once, so none is lost
  waitingToRetry: boolean; // its head failed and waits for its next attempt: commits do not wake it
  wake: () => void;
};

type Options = {
  engine: Engine; // whose commits wake the loops, whose history says how long a release ran, where reminders are recorded
  outbox: Outbox;
  clock: Clock;
  log: Log;
  backlog: number; // RS_WEBHOOK_BACKLOG
  fetch?: typeof fetch;
  random?: () => number;
  attemptTimeoutMs?: number;
};

let options: Options | null = null;
const loops = new Map<string, Loop>();
let cancelReminders = () => {};
// Every commit (this replica's or another's) wakes the loops: there may be something to send. Not one that
// waits to try its head again: a new event changes nothing for it, and it would only look for nothing.
const wakeAll = () => {
  for (const loop of loops.values()) if (!loop.waitingToRetry) loop.wake();
};
// The engines wakeAll listens to: a reload calls deliver again, and must not add it twice.
const listeningTo = new WeakSet<Engine>();

/**
 * Starts delivering to `hooks` (and sending their reminders); a reload calls it again with the new list.
 * Resolves once each new webhook has looked at the store once: a new webhook is sent the events
 * committed from then on, so the daemon waits for this before it answers anyone.
 */
export function deliver(hooks: Webhook[], o: Options): Promise<void> {
  options = o;
  if (!listeningTo.has(o.engine)) {
    listeningTo.add(o.engine);
    o.engine.onCommit(wakeAll);
  }
  const firstLooks: Promise<void>[] = [];
  const keep = new Set(hooks.map((h) => h.key));
  for (const [key, loop] of loops)
    if (!keep.has(key)) {
      loop.running = false;
      loop.wake();
      loops.delete(key);
    }
  for (const hook of hooks) {
    const running = loops.get(hook.key);
    if (running && !running.status.disabled) {
      running.hook = hook; // its filters may have changed; its progress is the same
      running.status.label = hook.label;
      continue;
    }
    if (running) running.running = false; // a reload enables a webhook that 410 disabled
    const loop: Loop = {
      hook,
      running: true,
      woken: false,
      waitingToRetry: false,
      wake: () => {
        loop.woken = true;
      },
      status: {
        label: hook.label,
        format: hook.format,
        disabled: null,
        lastSuccess: null,
        lastFailure: null,
        backlog: 0,
        looked: false,
        retryAt: null,
        dropped: 0,
        deliveries: { delivered: 0, failed: 0, dropped: 0 },
      },
    };
    loops.set(hook.key, loop);
    firstLooks.push(run(loop));
  }
  cancelReminders();
  if (hooks.some((h) => h.remindAfterMs !== null)) void remind();
  return Promise.all(firstLooks).then(() => {});
}

/** Stops every loop: at shutdown, after the last answer. */
export function stopDelivery(): void {
  for (const loop of loops.values()) {
    loop.running = false;
    loop.wake();
  }
  loops.clear();
  cancelReminders();
}

export const webhookStatuses = (): WebhookStatus[] => [...loops.values()].map((l) => l.status);

// Waits `ms`, or less when woken (a commit, a reload, shutdown), also by a wake that came while it was busy.
function pause(loop: Loop, ms: number, clock: Clock): Promise<void> {
  if (loop.woken) {
    loop.woken = false;
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const cancel = clock.after(ms, () => finish());
    const finish = () => {
      cancel();
      loop.wake = () => {
        loop.woken = true;
      };
      resolve();
    };
    loop.wake = finish;
  });
}

// Runs the webhook's loop; resolves after its first look at the store (the loop goes on).
function run(loop: Loop): Promise<void> {
  let looked = () => {};
  const firstLook = new Promise<void>((resolve) => {
    looked = resolve;
  });
  void deliverLoop(loop, () => looked()).finally(() => looked());
  return firstLook;
}

async function deliverLoop(loop: Loop, looked: () => void): Promise<void> {
  while (loop.running && options) {
    const { outbox, clock, log } = options;
    const claim = await outbox.claim(loop.hook.key, BATCH, options.backlog).catch(() => null);
    looked();
    if (!loop.running) return;
    if (!claim) {
      await pause(loop, IDLE_MS, clock); // another replica delivers, or the store is away
      continue;
    }
    loop.status.backlog = claim.newest - claim.progress.delivered;
    loop.status.looked = true;
    loop.status.dropped = claim.progress.dropped;
    const hears = (lock: string) => hearsLock(loop.hook, lock);
    const first = claim.events.findIndex((p) => wants(loop.hook, p.event, hears));
    if (first < 0) {
      const last = claim.events[claim.events.length - 1];
      if (last)
        await outbox.advance(loop.hook.key, last.seq, 0); // nothing it wants: skip past
      else await pause(loop, IDLE_MS, clock);
      continue;
    }
    const head = claim.events[first] as Pending;
    if (first > 0) await outbox.advance(loop.hook.key, head.seq - 1, 0);
    // Waiting to try again. On PostgreSQL the claim may lapse meanwhile: whichever replica claims it
    // next waits for the same stored time, and only one gets the claim then.
    const wait = claim.progress.nextAt - clock.now();
    if (wait > 0) {
      loop.status.retryAt = claim.progress.nextAt;
      loop.waitingToRetry = true;
      await pause(loop, wait, clock);
      loop.waitingToRetry = false;
      continue;
    }
    loop.status.retryAt = null;
    const answer = await attempt(loop.hook, head);
    const now = clock.now();
    if (answer.status !== null && answer.status >= 200 && answer.status < 300) {
      await outbox.advance(loop.hook.key, head.seq, 0);
      loop.status.lastSuccess = { at: now, status: answer.status };
      loop.status.deliveries.delivered++;
      continue;
    }
    loop.status.lastFailure = { at: now, status: answer.status, error: answer.error };
    if (answer.status === 410) {
      loop.status.disabled = `410 Gone at ${iso(now)}: the receiver says this webhook is no more`;
      log.warn(`webhook ${loop.hook.label} answered 410 Gone: disabled until the configuration is reloaded`);
      loop.running = false;
      return;
    }
    const failures = claim.progress.attempts + 1;
    const delay = nextDelay(failures, answer.retryAfterMs, options.random ?? Math.random);
    if (delay === null) {
      await outbox.advance(loop.hook.key, head.seq, 1);
      loop.status.deliveries.dropped++;
      log.error(
        `webhook ${loop.hook.label}: gave up on event ${messageId(head.seq, head.event)} (${head.event.kind} on ${head.event.lock || "every lock"}) after ${failures} attempts: ${answer.error}`,
      );
      continue;
    }
    loop.status.deliveries.failed++;
    log.warn(
      `webhook ${loop.hook.label}: attempt ${failures} failed (${answer.error}); trying again in ${Math.round(delay / 1000)} s`,
    );
    await outbox.retry(loop.hook.key, failures, now + delay);
  }
}

// One attempt: cancelled (not raced) when the receiver takes longer than the limit. Redirects are not
// followed: a signed body is for this URL only.
async function attempt(hook: Webhook, p: Pending): Promise<Answer> {
  const o = options as Options;
  const told = await lookUp(o.engine, p.event);
  const now = o.clock.now();
  const message = render(hook, messageId(p.seq, p.event), p.event, now, told);
  return send(hook.url, message, now, { limit: o.attemptTimeoutMs, fetch: o.fetch });
}

const ENDS_A_RELEASE: ReadonlySet<string> = new Set(["stopped", "expired", "abandoned"]);

/**
 * What a message says that its event does not: how long an ended release ran (from its start in the
 * history; left out when that is too far back to find) and until when a freeze that began lasts.
 */
async function lookUp(engine: Engine, e: Event): Promise<Told> {
  if (e.kind === "frozen") {
    const freeze = calendarOf(e.lock, e.at).now;
    return freeze ? { until: describeLocalTime(freeze.until, freeze.window.timezone) } : {};
  }
  if (!ENDS_A_RELEASE.has(e.kind) || e.releaseId === null) return {};
  const history = await engine.history(START_LOOKUP, e.lock).catch(() => []);
  const started = history.find((h) => h.kind === "started" && h.releaseId === e.releaseId);
  return started ? { ranForMs: e.at - started.at } : {};
}
// How far back a stop's start is looked for: a release with more events than this on its lock since it
// started is sent without its length rather than delay every message.
const START_LOOKUP = 500;

export type Answer = { status: number | null; error: string; retryAfterMs: number | null; body: string };

/**
 * Posts one message: cancelled (not raced) when the receiver takes longer than the limit, redirects not
 * followed (a signed body is for this URL only). The answer's body is read only when asked for.
 */
export async function send(
  url: string,
  message: Message,
  now: number,
  o: { limit?: number; fetch?: typeof fetch; readBody?: boolean } = {},
): Promise<Answer> {
  const limit = o.limit ?? ATTEMPT_TIMEOUT_MS;
  try {
    const res = await (o.fetch ?? fetch)(url, {
      method: "POST",
      headers: message.headers,
      body: message.body,
      redirect: "manual",
      signal: AbortSignal.timeout(limit),
    });
    const body = o.readBody ? (await res.text()).slice(0, 200).trim() : "";
    if (!o.readBody) await res.body?.cancel().catch(() => {});
    return {
      status: res.status,
      error: `HTTP ${res.status}`,
      retryAfterMs: retryAfter(res.headers.get("retry-after"), now),
      body,
    };
  } catch (e) {
    const timedOut = (e as Error).name === "TimeoutError" || (e as Error).name === "AbortError";
    const error = timedOut ? `no answer within ${limit / 1000} s` : (e as Error).message;
    return { status: null, error, retryAfterMs: null, body: "" };
  }
}

// Every minute: a release running longer than a webhook's remind_after gets a reminder, recorded once
// (across replicas and restarts) as a long-running event, then again each time as long again.
async function remind(): Promise<void> {
  const o = options;
  if (!o) return;
  const now = o.clock.now();
  const paces = new Set<number>();
  for (const { hook } of loops.values()) if (hook.remindAfterMs !== null) paces.add(hook.remindAfterMs);
  for (const [lock, entry] of o.engine.known())
    for (const r of entry.releases) {
      if (r.locks && r.locks[0] !== lock) continue; // a release of several locks is reminded of once, on its first
      for (const every of paces) {
        const n = Math.floor((now - r.startedAt) / every);
        if (n < 1) continue;
        const at = r.startedAt + n * every;
        const event: Event = {
          lock,
          at,
          kind: "long-running",
          releaseId: r.id,
          name: r.name,
          reason: `running for ${paceWords(n * every)} (every ${paceWords(every)})`,
          by: r.by,
          ...(r.locks ? { locks: r.locks } : {}),
        };
        await o.engine
          .recordOnce({ window: `remind ${every} ${r.id}`, lock, kind: "long-running", at }, [event])
          .catch(() => false);
      }
    }
  if (options === o) cancelReminders = o.clock.after(60_000, () => remind());
}
