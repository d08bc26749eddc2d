// Reads with many locks in use cost what one lock's does (issue 28): a lock's state is found from an
// index of the locks rather than by a walk over all of them, and its waiters from the line split by
// lock once per change. Counted as the entries read, on the in-memory store with the test clock.

import { Database } from "bun:sqlite";
import { afterEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { createEngine, type Engine } from "../src/engine.ts";
import { block } from "../src/release.ts";
import { openMemoryStore } from "../src/store/memory.ts";
import { AROUND_QUERY, openSqliteStore } from "../src/store/sqlite.ts";
import type { Entry, Queued, Store } from "../src/store/store.ts";
import { testClock } from "./clock.ts";
import { tempDir, until } from "./daemon.ts";

const holder = (name: string) => ({ name, reason: "", ttlSeconds: null });
const gone = new AbortController().signal;

/** The engine's cache of locks, with every step of a walk over it counted from now on. */
function countWalks(locks: ReadonlyMap<string, Entry>): { steps: number } {
  const counted = { steps: 0 };
  const walk = Map.prototype[Symbol.iterator];
  Object.defineProperty(locks, Symbol.iterator, {
    *value(this: Map<string, Entry>) {
      for (const pair of walk.call(this)) {
        counted.steps++;
        yield pair;
      }
    },
  });
  return counted;
}

let engine: Engine; // the engine of the test that runs
const openEngine = (store: Store, clock: ReturnType<typeof testClock>) => {
  engine = createEngine({ store, clock });
  return engine.open();
};

afterEach(async () => {
  await engine.close();
});

describe("every lock's state with many locks in use is found without a walk over every lock per lock", () => {
  test("the states of 2,000 locks in use, as /locks reads them, walk the locks a few times, not once per lock", async () => {
    const clock = testClock();
    await openEngine(openMemoryStore(10_000, clock.now), clock);
    const n = 2_000;
    for (let i = 0; i < n; i++) expect((await engine.start(`team${i}/app`, holder("h"), 0, gone)).ok).toBe(true);
    await engine.refresh("team0/app"); // the cache is read again: every lock's state is worked out anew when next read
    const counted = countWalks(engine.known());
    for (let i = 0; i < n; i++) expect(engine.state(`team${i}/app`).release?.name).toBe("h");
    expect(counted.steps).toBeLessThanOrEqual(3 * n);
  });
});

describe("a lock's waiters are read without a walk over the whole line at each read", () => {
  test("100 reads of one lock's waiters, with 500 waiting on other locks, read the line at most once", async () => {
    const clock = testClock();
    const memory = openMemoryStore(10_000, clock.now);
    let reads = 0;
    const proxies = new WeakMap<Queued[], Queued[]>(); // one for each line the store gives, as it gives one array for each
    const counting = (line: Queued[]) => {
      const proxy =
        proxies.get(line) ??
        new Proxy(line, {
          get(target, key, receiver) {
            if (typeof key === "string" && /^\d+$/.test(key)) reads++;
            return Reflect.get(target, key, receiver);
          },
        });
      proxies.set(line, proxy);
      return proxy;
    };
    const store: Store = { ...memory, waiting: () => counting(memory.waiting()) };
    await openEngine(store, clock);
    const n = 500;
    for (let i = 0; i < n; i++) {
      expect((await engine.start(`team${i}/app`, holder("h"), 0, gone)).ok).toBe(true);
      void engine.start(`team${i}/app`, holder(`w${i}`), 3600, gone);
    }
    await until(async () => engine.waiters.size === n, `${n} waiters in line`);
    const before = reads;
    for (let i = 0; i < 100; i++) expect(engine.waiting("team7/app").map((w) => w.name)).toEqual(["w7"]);
    expect(reads - before).toBeLessThanOrEqual(n + 1);
  });
});

describe("on SQLite, a change reads the rows around its lock through the index of names, not every lock", () => {
  test("the query for a lock's rows plans no scan of the lock table, and finds its own, the root's, above and below", async () => {
    const file = join(tempDir(), "around.db");
    const clock = testClock();
    const store = openSqliteStore(file, 10_000, clock.now);
    await openEngine(store, clock);
    for (const lock of ["prod", "prod/eu", "prod/eu/web", "prod/eu0", "prod/us", "staging"])
      expect((await engine.change(lock, (s, now) => block(s, { name: "ana", reason: "freeze" }, now))).ok).toBe(true);
    await engine.close();
    await store.close();
    const db = new Database(file, { readonly: true });
    try {
      const plan = db.query<{ detail: string }, [string, string]>(`EXPLAIN QUERY PLAN ${AROUND_QUERY}`);
      expect(plan.all("prod/eu", '["","prod"]').map((p) => p.detail)).not.toContain("SCAN lock");
      const names = db
        .query<{ name: string }, [string, string]>(AROUND_QUERY)
        .all("prod/eu", '["","prod"]')
        .map((r) => r.name);
      expect(names.sort()).toEqual(["", "prod", "prod/eu", "prod/eu/web"]);
    } finally {
      db.close();
    }
  });
});
