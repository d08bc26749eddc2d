// PostgreSQL group commit (issue 28): changes asked for together share one transaction and one commit,
// each decided in order on what the ones before it wrote, as SQLite's do. Runs when RS_TEST_DB names a
// PostgreSQL database (make test-postgres); rows written by one transaction share its id (xmin).
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { closeEngine, openEngine, start } from "../src/engine.ts";
import type { Store } from "../src/store/store.ts";

const url = process.env.RS_TEST_DB ?? "";
const holder = (name: string) => ({ name, reason: "", ttlSeconds: null });
const gone = new AbortController().signal;

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
    await closeEngine();
    await store.close();
    await sql.close();
  });

  test("twenty starts asked for together, on twenty locks, are written by fewer than twenty transactions", async () => {
    const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => start(`team${i}`, holder("h"), 0, gone)));
    expect(outcomes.every((o) => o.ok)).toBe(true);
    const [{ n }] = await sql`SELECT count(DISTINCT xmin::text) AS n FROM releasestatus_events WHERE kind = 'started'`;
    expect(Number(n)).toBeLessThan(20);
  });

  test("two starts on one lock asked for together: the first is granted, the second decided on it and refused", async () => {
    const [first, second] = await Promise.all([
      start("prod", holder("first"), 0, gone),
      start("prod", holder("second"), 0, gone),
    ]);
    expect(first?.ok).toBe(true);
    expect(second?.ok ? "granted" : second?.reason).toBe("running");
  });
});
