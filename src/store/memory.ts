// State kept in this process only (RS_DB=:memory:): lost when the daemon stops.
// The engine's specification runs on it with an injected clock.
import type { Event } from "../release.ts";
import {
  type CountNames,
  catchUp,
  concerns,
  counted,
  type Decide,
  decideInLine,
  type Entry,
  forgets,
  heldBy,
  LocalWaitLine,
  type Mark,
  markKey,
  type Progress,
  queueEvent,
  type Store,
  type Stored,
  under,
} from "./store.ts";

export function openMemoryStore(historyLimit: number, clock: () => number = Date.now): Store {
  const stored: Stored = { lastId: 0, entries: new Map<string, Entry>() };
  const events: Event[] = []; // oldest first
  let firstSeq = 1; // the sequence number of events[0]
  const line = new LocalWaitLine();
  const append = (added: Event[]) => {
    events.push(...added);
    // Trimmed in batches: dropping one event at a time from the front would copy the whole array on every change.
    if (events.length > historyLimit + 1024) firstSeq += events.splice(0, events.length - historyLimit).length;
  };
  const progress = new Map<string, Progress>();
  const progressOf = (webhook: string): Progress => {
    let p = progress.get(webhook);
    if (!p) {
      p = { delivered: firstSeq + events.length - 1, attempts: 0, nextAt: 0, dropped: 0 }; // from the newest
      progress.set(webhook, p);
    }
    return p;
  };
  const marks = new Set<string>();
  const latestMark = new Map<string, Mark>(); // markNext's latest, by series and lock
  const count: CountNames = (locks, by) => {
    let n = 0;
    for (const [name, e] of stored.entries)
      if (counted(name) && (locks === null || under(locks, name)) && (by === undefined || heldBy(e, by))) n++;
    return n;
  };
  const snapshot = (): Stored => ({ lastId: stored.lastId, entries: new Map(stored.entries) });
  // For a pool: when each of its children last came free, from the newest end of a release on it.
  const withFreedAt = (locks: readonly string[] | undefined): Stored => {
    if (!locks?.length) return stored;
    const freedAt = new Map<string, number>();
    for (const e of events)
      if (e.kind === "stopped" || e.kind === "expired" || e.kind === "abandoned")
        for (const l of e.locks ?? [e.lock]) if (locks.includes(l)) freedAt.set(l, e.at);
    return { ...stored, freedAt };
  };

  return {
    description: "memory (state is lost when the daemon stops)",
    exclusive: true,
    health: () => ({ writable: true, readable: true, problem: null }),
    readAll: async () => snapshot(),
    read: async () => snapshot(),
    transact: async (lock, decide: Decide, options = {}) =>
      decideInLine(lock, withFreedAt(options.freedOf), clock(), decide, line, options, count, (w) => {
        for (const [name, e] of w.entries) {
          if (forgets(name, e)) stored.entries.delete(name);
          else stored.entries.set(name, e);
        }
        if (w.lastId !== null) stored.lastId = w.lastId;
        append(w.events);
      }),
    leave: async (lock, id, why) => {
      const waiter = line.leave(id);
      if (!waiter) return null;
      const event = queueEvent("left-queue", lock, waiter, clock(), why);
      append([event]);
      return { lock, events: [event], before: null, after: null, entries: new Map() };
    },
    mark: async (mark, added) => {
      if (marks.has(markKey(mark))) return null;
      marks.add(markKey(mark));
      append(added);
      return { lock: mark.lock, events: added, before: null, after: null, entries: new Map() };
    },
    markNext: async (series, lock, next) => {
      const decided = next(latestMark.get(`${series} ${lock}`) ?? null, events[events.length - 1]?.at ?? -Infinity);
      if (!decided) return null;
      for (const m of decided.marks) {
        marks.add(markKey(m));
        latestMark.set(`${series} ${lock}`, m);
      }
      append(decided.events);
      return { lock, events: decided.events, before: null, after: null, entries: new Map() };
    },
    locksMarked: async (series, kind) =>
      [...latestMark.values()].filter((m) => m.window === series && m.kind === kind).map((m) => m.lock),
    marked: async (window) => [...marks].some((m) => m.startsWith(`${window} `)),
    outbox: {
      claim: async (webhook, limit, backlog) => {
        const newest = firstSeq + events.length - 1;
        const oldest = events.length > 0 ? firstSeq : null;
        const p = progressOf(webhook);
        Object.assign(p, catchUp(p, { oldest, newest }, backlog).progress);
        const from = p.delivered + 1 - firstSeq;
        const pending = events.slice(from, from + limit).map((event, i) => ({ seq: p.delivered + 1 + i, event }));
        return { progress: { ...p }, events: pending, newest };
      },
      advance: async (webhook, seq, dropped) => {
        const p = progressOf(webhook);
        Object.assign(p, {
          delivered: Math.max(p.delivered, seq),
          dropped: p.dropped + dropped,
          attempts: 0,
          nextAt: 0,
        });
      },
      retry: async (webhook, attempts, at) => {
        Object.assign(progressOf(webhook), { attempts, nextAt: at });
      },
    },
    waiting: () => line.list(),
    history: async (limit, lock) =>
      events
        .slice(-historyLimit)
        .filter((e) => lock === undefined || concerns(lock, e))
        .slice(-limit)
        .reverse(),
    watch: () => {},
    backup: () => null,
    close: async () => {},
  };
}
