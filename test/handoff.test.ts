// What a hand-off costs does not grow with the line (issue 28): a stop, and the grant to the
// first waiter that follows it, look at the head of the line, never at every waiter. Counted as
// the entries of the wait line the engine reads, on the in-memory store with the test clock.
import { afterEach, describe, expect, test } from "bun:test";
import { change, closeEngine, engine, openEngine, start, state, waiting } from "../src/engine.ts";
import { stop } from "../src/release.ts";
import { openMemoryStore } from "../src/store/memory.ts";
import type { Queued, Store } from "../src/store/store.ts";
import { testClock } from "./clock.ts";
import { until } from "./daemon.ts";

const LOCK = "default";
const holder = (name: string) => ({ name, reason: "", ttlSeconds: null });

/** The in-memory store, with every entry of its wait line that anyone reads counted. */
function countingStore(): { store: Store; reads: () => number } {
  const clock = testClock();
  const store = openMemoryStore(10_000, clock.now);
  let reads = 0;
  const counting = (line: Queued[]) =>
    new Proxy(line, {
      get(target, key, receiver) {
        if (typeof key === "string" && /^\d+$/.test(key)) reads++;
        return Reflect.get(target, key, receiver);
      },
    });
  return { store: { ...store, waiting: () => counting(store.waiting()) }, reads: () => reads };
}

/** The entries of the line read by a start and a stop on a lock nobody waits for, with `n` waiting on others. */
async function readsOfAnUnwaitedChange(n: number): Promise<number> {
  const { store, reads } = countingStore();
  await openEngine(store, testClock());
  const gone = new AbortController().signal;
  for (let i = 0; i < n; i++) {
    expect((await start(`team${i}`, holder("h"), 0, gone)).ok).toBe(true);
    void start(`team${i}`, holder(`w${i}`), 3600, gone);
  }
  await until(async () => engine.waiters.size === n, `${n} waiters in line`);
  const before = reads();
  expect((await start("quiet", holder("q"), 0, gone)).ok).toBe(true);
  expect((await change("quiet", (s, now) => stop(s, null, { name: "" }, now))).ok).toBe(true);
  return reads() - before;
}

/** The entries of the line read from a stop to the next waiter holding the lock, with `n` in line. */
async function readsOfOneHandoff(n: number): Promise<number> {
  const { store, reads } = countingStore();
  await openEngine(store, testClock());
  const gone = new AbortController().signal;
  expect((await start(LOCK, holder("first"), 0, gone)).ok).toBe(true);
  for (let i = 0; i < n; i++) void start(LOCK, holder(`w${i}`), 3600, gone);
  await until(async () => engine.waiters.size === n && waiting().length === n, `${n} waiters in line`);
  const before = reads();
  await change(LOCK, (s, now) => stop(s, null, { name: "" }, now));
  await until(async () => state(LOCK).release?.name === "w0", "the first waiter holding the lock");
  return reads() - before;
}

describe("a hand-off reads the head of the line, not all of it", () => {
  afterEach(async () => {
    await closeEngine();
  });

  test("a stop and the grant to the next waiter read no more of a line of 2,000 than of a line of 20", async () => {
    const short = await readsOfOneHandoff(20);
    await closeEngine();
    const long = await readsOfOneHandoff(2_000);
    expect(long).toBeLessThanOrEqual(short + 10);
  });
});

describe("a change on a lock nobody waits for reads none of the line", () => {
  afterEach(async () => {
    await closeEngine();
  });

  test("a start and a stop on a lock without waiters, with 1,000 waiting on other locks, read no entry of the line", async () => {
    expect(await readsOfAnUnwaitedChange(1_000)).toBe(0);
  });
});
