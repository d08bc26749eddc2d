// State kept in this process only (RS_DB=:memory:): lost when the daemon stops.
// The engine's specification runs on it with an injected clock.
import { EMPTY_STATE, type Event } from "../release.ts";
import { type Decide, decideInLine, LocalWaitLine, queueEvent, type Store, type Stored } from "./store.ts";

export function openMemoryStore(historyLimit: number, clock: () => number = Date.now): Store {
  const locks = new Map<string, Stored>();
  const events: (Event & { lock: string })[] = []; // oldest first
  const line = new LocalWaitLine();
  const stored = (lock: string): Stored => locks.get(lock) ?? { state: EMPTY_STATE, version: 0 };
  const append = (lock: string, added: Event[]) => {
    for (const e of added) events.push({ ...e, lock });
    // Trimmed in batches: dropping one event at a time from the front would copy the whole array on every change.
    if (events.length > historyLimit + 1024) events.splice(0, events.length - historyLimit);
  };

  return {
    description: "memory (state is lost when the daemon stops)",
    exclusive: true,
    health: () => ({ writable: true, readable: true, problem: null }),
    read: async (lock) => stored(lock),
    transact: async (lock, decide: Decide, options = {}) =>
      decideInLine(lock, stored(lock), clock(), decide, line, options, (state, added, version) => {
        locks.set(lock, { state, version });
        append(lock, added);
      }),
    leave: async (lock, id, why) => {
      const waiter = line.leave(lock, id);
      if (!waiter) return null;
      const s = stored(lock);
      const event = queueEvent("left-queue", waiter, clock(), why);
      append(lock, [event]);
      return { lock, events: [event], before: s.state, after: s.state, version: s.version };
    },
    waiting: (lock) => line.list(lock),
    history: async (limit, lock) =>
      events
        .slice(-historyLimit)
        .filter((e) => lock === undefined || e.lock === lock)
        .slice(-limit)
        .reverse()
        .map(({ lock: _, ...e }) => e),
    watch: () => {},
    backup: () => null,
    close: async () => {},
  };
}
