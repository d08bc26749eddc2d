// PostgreSQL attacked as a hostile user would: a row locked by someone else for
// longer than the daemon will wait, and a newcomer racing a waiter. Needs root
// and Debian's postgresql; runs in `make test-postgres`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { daemonsPerTest, statusOf, until } from "./daemon.ts";
import { startCluster } from "./postgres.ts";

let pg: ReturnType<typeof startCluster>;
const daemon = daemonsPerTest();
beforeAll(() => {
  pg = startCluster();
});
afterAll(() => {
  pg?.destroy();
});

describe("a slow database", () => {
  test("a start that cannot get the row in time is answered storage, and never commits afterwards", async () => {
    const d = await daemon({ RS_DB: pg.url });
    expect(await d.body("/start?name=setup")).toBe("1\n");
    expect(await d.body("/stop")).toBe("1\n");
    const other = new SQL(pg.url);
    const held = other.begin(async (tx) => {
      await tx`SELECT * FROM releasestatus_lock WHERE name = 'default' FOR UPDATE`;
      await Bun.sleep(8_000); // another client holds the row for longer than any transaction may wait
    });
    await until(
      async () => pg.psql("SELECT count(*) FROM pg_locks WHERE mode = 'RowShareLock'").trim() !== "0",
      "the other client to hold the row",
    );
    const res = await d.get("/start?name=slow");
    expect(res.status).toBe(503);
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("storage");
    await held;
    await other.close();
    // The start the daemon answered 0 must not have taken effect once the row came free.
    await until(async () => (await d.get("/healthz")).status === 200, "the daemon to be healthy again");
    const holder = pg.psql("SELECT coalesce(holder, 'none') FROM releasestatus_lock WHERE name = 'default'").trim();
    expect(holder).toBe("none");
    expect((await statusOf(d)).release).toBeNull();
    expect(await d.body("/start?name=after")).toBe("1\n");
  }, 60_000);
});

describe("first come, first served across replicas", () => {
  test("a waiter joins the line in the same transaction as its refusal: a newcomer just after it is served after it", async () => {
    const [a, b] = await Promise.all([daemon({ RS_DB: pg.url }), daemon({ RS_DB: pg.url })]);
    if (!a || !b) throw new Error("two replicas expected");
    await a.body("/stop");
    expect(await a.body("/start?name=holder")).toBe("1\n");
    for (let round = 0; round < 5; round++) {
      const first = a.body(`/start?name=first${round}&wait=30`);
      await until(async () => (await statusOf(b)).queue.length === 1, "the first waiter in line");
      const second = b.body(`/start?name=second${round}&wait=30`);
      await until(async () => (await statusOf(a)).queue.length === 2, "the second waiter in line");
      expect(await b.body("/stop")).toBe("1\n");
      expect(await first).toBe("1\n");
      expect((await statusOf(b)).release.name).toBe(`first${round}`);
      expect(await a.body("/stop")).toBe("1\n");
      expect(await second).toBe("1\n");
    }
  }, 90_000);
});

describe("a database from the previous version", () => {
  test("keeps its release, its block (now the root's) and its id counter", async () => {
    // The schema and rows exactly as the previous version (schema version 1) left them.
    // Every table a later version adds goes too: the database is as version 1 left it.
    pg.psql(`DROP TABLE IF EXISTS releasestatus_schema, releasestatus_lock, releasestatus_events, releasestatus_waiters,
        releasestatus_freeze_marks, releasestatus_webhooks CASCADE;
      CREATE TABLE releasestatus_schema (version int NOT NULL); INSERT INTO releasestatus_schema VALUES (1);
      CREATE TABLE releasestatus_lock (name text PRIMARY KEY, last_id bigint NOT NULL DEFAULT 0,
        release_id bigint, holder text, release_reason text, started_at bigint, expires_at bigint,
        blocked_by text, block_reason text, blocked_since bigint);
      CREATE TABLE releasestatus_events (seq bigserial PRIMARY KEY, lock text NOT NULL, at bigint NOT NULL,
        kind text NOT NULL, release_id bigint, name text NOT NULL, reason text NOT NULL);
      CREATE TABLE releasestatus_waiters (id bigserial PRIMARY KEY, lock text NOT NULL, name text NOT NULL,
        reason text NOT NULL, replica text NOT NULL, since timestamptz NOT NULL DEFAULT clock_timestamp(),
        heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp());
      CREATE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
        WHERE heartbeat_at > clock_timestamp() - interval '5 seconds'
           OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds';
      INSERT INTO releasestatus_lock VALUES ('default', 41, 41, 'sion', 'v2.3.1', 1795880000000, NULL, 'ana', 'freeze', 1795880001000);`);
    const d = await daemon({ RS_DB: pg.url });
    const status = await statusOf(d);
    expect(status.release).toMatchObject({ id: 41, name: "sion", reason: "v2.3.1" });
    expect(status.block).toMatchObject({ name: "ana", reason: "freeze" });
    expect(await d.body("/stop")).toBe("1\n");
    expect(await d.body("/unblock")).toBe("1\n");
    expect((await d.get("/start")).headers.get("x-release-id")).toBe("42");
  });
});

describe("a database outage", () => {
  test("/status and /history say the state is unknown (503 storage) while the database is away, and recover", async () => {
    const d = await daemon({ RS_DB: pg.url });
    await d.body("/stop");
    await d.body("/unblock");
    expect(await d.body("/start?name=before")).toBe("1\n");
    pg.stop();
    try {
      const status = await d.get("/status?format=json");
      expect(status.status).toBe(503);
      expect(status.headers.get("x-reason-code")).toBe("storage");
      expect(await status.json()).toMatchObject({ known: false, reason: "storage" });
      const text = await d.get("/status");
      expect(text.status).toBe(503);
      expect(await text.text()).toMatch(/^unknown: /);
      const history = await d.get("/history");
      expect(history.status).toBe(503);
      expect(history.headers.get("x-reason-code")).toBe("storage");
      expect((await d.get("/start?name=during")).status).toBe(503);
    } finally {
      pg.start();
    }
    await until(async () => (await d.get("/status")).status === 200, "the daemon to read the database again");
    expect((await statusOf(d)).release.name).toBe("before");
    expect((await d.get("/history")).status).toBe(200);
  }, 60_000);
});

describe("a database administered by others", () => {
  // The line a replica that may not start prints before it exits 2.
  async function refusal(env: Record<string, string>): Promise<string> {
    const started = await daemon(env).then(
      () => null,
      (e: Error) => e.message,
    );
    if (started === null) throw new Error("the daemon started, where it should have exited 2");
    expect(started).toContain("exited with 2");
    return started;
  }

  test("a statement_timeout of 1 ms set on the role and the database bounds none of the daemon's statements: it starts and serves", async () => {
    const url = pg.role("rs_hasty", { owner: true });
    pg.psql("ALTER ROLE rs_hasty SET statement_timeout = '1ms'; ALTER ROLE rs_hasty SET lock_timeout = '1ms'");
    pg.psql("ALTER DATABASE rs_hasty SET statement_timeout = '1ms'");
    const [a, b] = await Promise.all([daemon({ RS_DB: url }), daemon({ RS_DB: url })]);
    if (!a || !b) throw new Error("two replicas expected");
    expect(await a.body("/start?name=sion")).toBe("1\n");
    expect((await statusOf(b)).release.name).toBe("sion");
    expect(await b.body("/stop")).toBe("1\n");
  }, 60_000);

  test("a database read-only by default (default_transaction_read_only) does not stop the daemon: it starts and serves", async () => {
    const url = pg.role("rs_readonly", { owner: true });
    pg.psql("ALTER DATABASE rs_readonly SET default_transaction_read_only = on");
    const d = await daemon({ RS_DB: url });
    if (!d) throw new Error("a replica expected");
    expect(await d.body("/start?name=sion")).toBe("1\n");
    expect(await d.body("/stop")).toBe("1\n");
  }, 60_000);

  test("a role that may not CREATE in the schema, on a fresh database, exits 2 naming the grant", async () => {
    const url = pg.role("rs_guest"); // the database is postgres's: since PostgreSQL 15 others may not create in public
    const line = await refusal({ RS_DB: url });
    expect(line).toContain(
      "the role rs_guest may not CREATE in schema public: GRANT CREATE ON SCHEMA public TO rs_guest, or create the tables as their owner first",
    );
    expect(pg.psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'releasestatus%'", "rs_guest").trim()).toBe(
      "0",
    );
  }, 60_000);

  test("tables owned by another role, without grants, exit 2 naming the grants; with them it serves", async () => {
    const url = pg.role("rs_tenant");
    // The owner creates the tables: a replica run once as postgres on that database.
    const owner = await daemon({ RS_DB: url.replace("//rs_tenant:", "//postgres:") });
    await owner.stop();
    pg.psql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", "rs_tenant");
    const line = await refusal({ RS_DB: url });
    const grants = line.match(/GRANT [^;\n]+ TO rs_tenant/g) ?? [];
    expect(grants).toContain(
      "GRANT SELECT, INSERT, UPDATE, DELETE ON releasestatus_schema, releasestatus_lock, releasestatus_events, releasestatus_waiters, releasestatus_freeze_marks, releasestatus_webhooks TO rs_tenant",
    );
    for (const grant of grants) pg.psql(grant, "rs_tenant");
    const d = await daemon({ RS_DB: url });
    expect(await d.body("/start?name=tenant")).toBe("1\n");
    expect(pg.psql("SELECT holder FROM releasestatus_lock WHERE name = 'default'", "rs_tenant").trim()).toBe("tenant");
  }, 60_000);
});
