// State kept in this process only (RS_DB=:memory:): lost when the daemon stops.
// The engine's specification runs on it with an injected clock.
import type { Event } from "../release.ts";
import {
  concerns,
  type Decide,
  decideInLine,
  type Entry,
  LocalWaitLine,
  markKey,
  queueEvent,
  type Store,
  type Stored,
} from "./store.ts";

export function openMemoryStore(historyLimit: number, clock: () => number = Date.now): Store {
  const stored: Stored = { lastId: 0, entries: new Map<string, Entry>() };
  const events: Event[] = []; // oldest first
  const line = new LocalWaitLine();
  const append = (added: Event[]) => {
    events.push(...added);
    // Trimmed in batches: dropping one event at a time from the front would copy the whole array on every change.
    if (events.length > historyLimit + 1024) events.splice(0, events.length - historyLimit);
  };
  const marks = new Set<string>();
  const snapshot = (): Stored => ({ lastId: stored.lastId, entries: new Map(stored.entries) });

  return {
    description: "memory (state is lost when the daemon stops)",
    exclusive: true,
    health: () => ({ writable: true, readable: true, problem: null }),
    readAll: async () => snapshot(),
    read: async () => snapshot(),
    transact: async (lock, decide: Decide, options = {}) =>
      decideInLine(lock, stored, clock(), decide, line, options, (w) => {
        for (const [name, e] of w.entries) stored.entries.set(name, e);
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
    marked: async (window) => [...marks].some((m) => m.startsWith(`${window} `)),
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
