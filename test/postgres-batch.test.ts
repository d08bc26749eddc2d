// PostgreSQL at scale (issue 28): changes asked for together share one transaction and one commit, each
// decided in order on what the ones before it wrote, as SQLite's do; the heartbeat that vouches for a
// replica's waiters is one statement, not one per waiter. Runs when RS_TEST_DB names a PostgreSQL database
// (make test-postgres); rows written by one transaction share its id (xmin); statements are counted in the
// server's log (test/postgres.ts starts the cluster with its log beside the data directory).
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { SQL } from "bun";
import { createEngine, type Engine } from "../src/engine.ts";
import type { Store } from "../src/store/store.ts";

const url = process.env.RS_TEST_DB ?? "";
const holder = (name: string) => ({ name, reason: "", ttlSeconds: null });
const gone = new AbortController().signal;

let engine: Engine; // the engine of the test that runs
const openEngine = (store: Store) => {
  engine = createEngine({ store });
  return engine.open();
};

describe.skipIf(!url.startsWith("postgres"))("PostgreSQL commits the changes asked for together at once", () => {
  let store: Store;
  let sql: SQL;
  beforeEach(async () => {
    sql = new SQL(url);
    await sql`DO $$ BEGIN
      IF to_regclass('releasestatus_lock') IS NOT NULL THEN
        DELETE FROM releasestatus_waiters; DELETE FROM releasestatus_events; DELETE FROM releasestatus_lock;
      END IF; END $$`;
    const { openPostgresStore } = await import("../src/store/postgres.ts");
    store = await openPostgresStore({ url, historyLimit: 10_000, pool: 4 });
    await openEngine(store);
  });
  afterEach(async () => {
    await engine.close();
    await store.close();
    await sql.close();
  });

  test("twenty starts asked for together, on twenty locks, are written by fewer than twenty transactions", async () => {
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => engine.start(`team${i}`, holder("h"), 0, gone)),
    );
    expect(outcomes.every((o) => o.ok)).toBe(true);
    const [{ n }] = await sql`SELECT count(DISTINCT xmin::text) AS n FROM releasestatus_events WHERE kind = 'started'`;
    expect(Number(n)).toBeLessThan(20);
  });

  test("two starts on one lock asked for together: the first is granted, the second decided on it and refused", async () => {
    const [first, second] = await Promise.all([
      engine.start("prod", holder("first"), 0, gone),
      engine.start("prod", holder("second"), 0, gone),
    ]);
    expect(first?.ok).toBe(true);
    expect(second?.ok ? "granted" : second?.reason).toBe("running");
  });
});

describe.skipIf(!url.startsWith("postgres"))("a replica vouches for all its waiters in one statement", () => {
  test("with 50 waiters, each heartbeat is one statement, not one per waiter", async () => {
    const sql = new SQL(url);
    await sql`DO $$ BEGIN
      IF to_regclass('releasestatus_lock') IS NOT NULL THEN
        DELETE FROM releasestatus_waiters; DELETE FROM releasestatus_events; DELETE FROM releasestatus_lock;
      END IF; END $$`;
    const [{ data_directory }] = await sql`SELECT current_setting('data_directory') AS data_directory`;
    const log = join(dirname(String(data_directory)), "log");
    const [{ db }] = await sql`SELECT current_database() AS db`;
    await sql.unsafe(`ALTER DATABASE "${db}" SET log_statement = 'mod'`); // for the store's connections, opened next
    const logged = (what: string) => readFileSync(log, "utf8").split(what).length - 1;
    const { openPostgresStore } = await import("../src/store/postgres.ts");
    const store = await openPostgresStore({ url, historyLimit: 10_000, pool: 4 });
    try {
      await openEngine(store);
      expect((await engine.start("prod", holder("holder"), 0, gone)).ok).toBe(true);
      for (let i = 0; i < 50; i++) void engine.start("prod", holder(`w${i}`), 3600, gone);
      const until = async (check: () => boolean) => {
        for (let i = 0; i < 1500 && !check(); i++) await Bun.sleep(20);
      };
      await until(() => engine.waiters.size === 50);
      const ticksBefore = logged("DELETE FROM releasestatus_waiters");
      const beatsBefore = logged("heartbeat_at = clock_timestamp()");
      await until(() => logged("DELETE FROM releasestatus_waiters") >= ticksBefore + 2);
      const ticks = logged("DELETE FROM releasestatus_waiters") - ticksBefore;
      expect(ticks).toBeGreaterThanOrEqual(2);
      expect(logged("heartbeat_at = clock_timestamp()") - beatsBefore).toBeLessThanOrEqual(ticks + 1);
    } finally {
      await engine.close();
      await store.close();
      await sql.unsafe(`ALTER DATABASE "${db}" RESET log_statement`);
      await sql.close();
    }
  });
});
