// The lock engine's specification: leases, expiry, renewal, fencing, waiting in
// line, hand-over, blocks and shutdown. Time is a clock the test moves; nothing
// sleeps. The same suite runs on every store: memory and SQLite here, and
// PostgreSQL when RS_TEST_DB names one (make test-postgres).
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { SQL } from "bun";
import { parseWindow, type Window } from "../src/calendar.ts";
import { createEngine, type Engine, type EngineSetup, type Heard } from "../src/engine.ts";
import { calendarSettled, frozenAt, keepCalendar, replaceCalendar, stopCalendar } from "../src/freezes.ts";
import { block, type Outcome, ROOT, renew, STORAGE_FAILED, stop, unblock } from "../src/release.ts";
import { openMemoryStore } from "../src/store/memory.ts";
import { openSqliteStore } from "../src/store/sqlite.ts";
import type { Room, Store } from "../src/store/store.ts";
import { T0, testClock } from "./clock.ts";
import { tempDir, until } from "./daemon.ts";

const LOCK = "default";
let engine: Engine; // the engine of the test that runs

// historyLimit: how many events the store keeps (a test of what survives pruning keeps few).
type StoreMaker = (clock: () => number, historyLimit?: number) => Promise<Store>;

const stores: [string, StoreMaker][] = [
  ["memory", async (clock, historyLimit = 10_000) => openMemoryStore(historyLimit, clock)],
  [
    "SQLite",
    async (clock, historyLimit = 10_000) => openSqliteStore(join(tempDir(), "engine.db"), historyLimit, clock),
  ],
];
const pgUrl = process.env.RS_TEST_DB;
if (pgUrl?.startsWith("postgres")) {
  stores.push([
    "PostgreSQL",
    async (clock, historyLimit = 10_000) => {
      const sql = new SQL(pgUrl);
      // Every test starts from an empty lock: the tables are made by the store on first use.
      await sql`DO $$ BEGIN
        IF to_regclass('releasestatus_lock') IS NOT NULL THEN
          DELETE FROM releasestatus_waiters; DELETE FROM releasestatus_events; DELETE FROM releasestatus_lock;
          DELETE FROM releasestatus_freeze_marks; DELETE FROM releasestatus_webhooks;
        END IF; END $$`;
      await sql.close();
      const { openPostgresStore } = await import("../src/store/postgres.ts");
      return openPostgresStore({ url: pgUrl, historyLimit, pool: 4, now: clock });
    },
  ]);
}

const holder = (name: string, ttlSeconds: number | null = null) => ({ name, reason: "", ttlSeconds });
const idOf = (o: Outcome) => (o.ok ? o.next.release?.id : undefined);
const reasonOf = (o: Outcome) => (o.ok ? "granted" : o.reason);
/** Waits until `n` waiters are in line and asleep in the engine, each with its deadline set. */
const inLine = (n: number) =>
  until(async () => engine.waiters.size === n && engine.waiting().length === n, `${n} waiters in line`);
const kinds = async () => (await engine.history(100, LOCK)).map((e) => e.kind).reverse();

for (const [storeName, makeStore] of stores) {
  describe(`the engine on ${storeName}`, () => {
    let clock: ReturnType<typeof testClock>;
    let store: Store;
    let heard: Heard[];
    // What the configuration says of limits, pools and lines: a test sets what it needs; the engine asks at each decision.
    let config: Required<Pick<EngineSetup, "limitOf" | "childrenOf" | "newest">>;
    // Each test's engine (and each restart's) on the test's store, heard from before it opens.
    const open = () => {
      engine = createEngine({
        store,
        clock,
        limitOf: (lock) => config.limitOf(lock),
        childrenOf: (lock) => config.childrenOf(lock),
        newest: (lock) => config.newest(lock),
        frozen: frozenAt,
      });
      engine.onCommit((h) => heard.push(h));
      return engine.open();
    };
    beforeEach(async () => {
      clock = testClock();
      store = await makeStore(clock.now);
      config = { limitOf: () => 1, childrenOf: () => [], newest: () => false };
      heard = [];
      await open();
    });
    afterEach(async () => {
      await engine.close();
      await store.close();
    });

    const startNow = (name: string, ttl: number | null = null) =>
      engine.start(LOCK, holder(name, ttl), 0, new AbortController().signal);
    const stopNow = (id: number | null = null, name = "") =>
      engine.change(LOCK, (s, now) => stop(s, id, { name }, now));

    describe("leases", () => {
      test("a release with a lease ends when the lease runs out, not a moment before", async () => {
        const granted = await startNow("sion", 60);
        expect(granted.ok && granted.next.release?.expiresAt).toBe(T0 + 60_000);
        await clock.advance(59_999);
        expect(engine.state(LOCK).release?.name).toBe("sion");
        await clock.advance(1);
        expect(engine.state(LOCK).release).toBeNull();
        expect(await kinds()).toEqual(["started", "expired"]);
      });

      test("renewing moves the end of the lease to ttl from now", async () => {
        const id = idOf(await startNow("sion", 10));
        await clock.advance(8_000);
        expect(reasonOf(await engine.change(LOCK, (s, now) => renew(s, id ?? 0, 10, now)))).toBe("granted");
        await clock.advance(9_000);
        expect(engine.state(LOCK).release?.id).toBe(id);
        await clock.advance(1_000);
        expect(engine.state(LOCK).release).toBeNull();
      });

      test("a release without a lease never ends on its own", async () => {
        await startNow("sion");
        await clock.advance(30 * 24 * 3600 * 1000);
        expect(engine.state(LOCK).release?.name).toBe("sion");
      });

      test("a lease that ran out is ended by the next request even before its timer fires", async () => {
        const ended = await startNow("sion", 5);
        // Move the store's time without running timers: the start itself must see the lease is over.
        clock.jump(6_000);
        const next = await startNow("bob");
        expect(reasonOf(next)).toBe("granted");
        expect(idOf(next)).toBe((idOf(ended) ?? 0) + 1);
        expect(await kinds()).toEqual(["started", "expired", "started"]);
      });
    });

    describe("fencing", () => {
      test("ids grow by one with every grant, across stops and expiries", async () => {
        const ids = [idOf(await startNow("a", 1))];
        await clock.advance(1_000);
        ids.push(idOf(await startNow("b")));
        await stopNow();
        ids.push(idOf(await startNow("c")));
        expect(ids).toEqual([1, 2, 3]);
      });

      test("a holder whose lease ran out cannot stop or renew the next release", async () => {
        const old = idOf(await startNow("old", 1));
        await clock.advance(1_000);
        const current = idOf(await startNow("new"));
        expect(reasonOf(await stopNow(old ?? 0))).toBe("wrong-id");
        expect(reasonOf(await engine.change(LOCK, (s, now) => renew(s, old ?? 0, 60, now)))).toBe("wrong-id");
        expect(engine.state(LOCK).release?.id).toBe(current);
      });

      test("a stop with the right id ends the release; the stopper is recorded, not the holder", async () => {
        const id = idOf(await startNow("sion"));
        expect(reasonOf(await stopNow(id ?? 0, "ana"))).toBe("granted");
        const [stopped] = await engine.history(1, LOCK);
        expect(stopped).toMatchObject({ kind: "stopped", releaseId: id, name: "ana" });
      });
    });

    describe("waiting in line", () => {
      test("waiters are served first come, first served as each release ends", async () => {
        await startNow("holder");
        const gone = new AbortController().signal;
        const first = engine.start(LOCK, holder("first"), 60, gone);
        await inLine(1);
        const second = engine.start(LOCK, holder("second"), 60, gone);
        await inLine(2);
        expect(engine.waiting(LOCK).map((w) => w.name)).toEqual(["first", "second"]);
        await stopNow();
        const firstGot = await first;
        expect(firstGot.ok && firstGot.next.release?.name).toBe("first");
        await stopNow();
        const secondGot = await second;
        expect(secondGot.ok && secondGot.next.release?.name).toBe("second");
        expect(engine.waiting(LOCK)).toEqual([]);
      });

      test("a newcomer is refused queued while others wait, even when nothing runs", async () => {
        await startNow("holder");
        const waiter = engine.start(LOCK, holder("waiter"), 60, new AbortController().signal);
        await inLine(1);
        await stopNow();
        // Between the stop and the waiter's own transaction, nobody else may take it.
        const newcomer = await startNow("newcomer");
        expect(["queued", "running"]).toContain(reasonOf(newcomer));
        const got = await waiter;
        expect(got.ok ? "granted" : `${got.reason}: ${got.message}`).toBe("granted");
        expect(engine.state(LOCK).release?.name).toBe("waiter");
      });

      test("a waiter whose client goes away leaves the line, and the next one is served", async () => {
        await startNow("holder");
        const leaving = new AbortController();
        const first = engine.start(LOCK, holder("first"), 60, leaving.signal);
        await inLine(1);
        const second = engine.start(LOCK, holder("second"), 60, new AbortController().signal);
        await inLine(2);
        leaving.abort();
        expect(reasonOf(await first)).toBe("timeout");
        expect(engine.waiting(LOCK).map((w) => w.name)).toEqual(["second"]);
        await stopNow();
        const got = await second;
        expect(got.ok && got.next.release?.name).toBe("second");
        const left = (await engine.history(10, LOCK)).find((e) => e.kind === "left-queue");
        expect(left).toMatchObject({ name: "first", reason: "disconnected" });
      });

      test("a waiter gives up when its wait runs out, and says so in the history", async () => {
        await startNow("holder");
        const waiter = engine.start(LOCK, holder("patient"), 30, new AbortController().signal);
        await inLine(1);
        await clock.advance(29_999);
        expect(engine.waiting(LOCK)).toHaveLength(1);
        await clock.advance(1);
        const answer = await waiter;
        expect(reasonOf(answer)).toBe("timeout");
        expect(answer.ok ? "" : answer.message).toContain("waited 30s");
        expect(await kinds()).toEqual(["started", "waiting", "left-queue"]);
      });

      test("a lease that runs out hands the release to the first waiter", async () => {
        await startNow("holder", 10);
        const waiter = engine.start(LOCK, holder("next"), 60, new AbortController().signal);
        await inLine(1);
        await clock.advance(10_000);
        const got = await waiter;
        expect(got.ok && got.next.release?.name).toBe("next");
        expect(await kinds()).toEqual(["started", "waiting", "expired", "started"]);
      });

      test("waiters wait through a block and are served when it is lifted", async () => {
        await engine.change(LOCK, (s, now) => block(s, { name: "ana", reason: "freeze" }, now));
        const waiter = engine.start(LOCK, holder("after-freeze"), 60, new AbortController().signal);
        await inLine(1);
        await engine.change(LOCK, (s, now) => unblock(s, { name: "ana" }, now));
        const got = await waiter;
        expect(got.ok && got.next.release?.name).toBe("after-freeze");
      });
    });

    // Replicas on a shared store may order requests that are in flight together either way; one daemon
    // holding its store decides them in the order they came, each after what the ones before it changed.
    describe.if(storeName !== "PostgreSQL")("changes asked for together", () => {
      test("are decided in the order asked, each on what the ones before it committed", async () => {
        const asked = [startNow("ana"), stopNow(), startNow("ben"), startNow("cy"), stopNow(), stopNow()];
        expect((await Promise.all(asked)).map(reasonOf)).toEqual([
          "granted",
          "granted",
          "granted",
          "running",
          "granted",
          "not-running",
        ]);
        expect(await kinds()).toEqual(["started", "stopped", "started", "stopped"]);
        expect((await engine.history(10, LOCK)).map((e) => e.name).reverse()).toEqual(["ana", "", "ben", ""]);
        expect(engine.state(LOCK).release).toBeNull();
      });

      test("a refusal asked for while a change is on its way waits for it rather than answer from before it", async () => {
        await startNow("ana");
        const stopping = stopNow();
        const starting = startNow("ben"); // memory still says ana holds the release
        expect(reasonOf(await stopping)).toBe("granted");
        expect(reasonOf(await starting)).toBe("granted");
        expect(engine.state(LOCK).release?.name).toBe("ben");
      });
    });

    describe("waking only the waiters a change can let through", () => {
      test("a stop wakes the first in line; each grant wakes the next; the rest sleep", async () => {
        await startNow("holder");
        const gone = new AbortController().signal;
        const names = ["first", "second", "third", "fourth", "fifth"];
        const waiters = new Map<string, Outcome | Promise<Outcome>>();
        for (const [i, name] of names.entries()) {
          waiters.set(name, engine.start(LOCK, holder(name), 60, gone));
          await inLine(i + 1);
        }
        // Count each waiter's attempts from now on: the store sees its place in line as `self`.
        const ids = new Map(engine.waiting(LOCK).map((w) => [w.id, w.name]));
        const tries = new Map<string, number>();
        const transact = store.transact.bind(store);
        store.transact = (lock, decide, options = {}) => {
          const name = options.self === undefined ? undefined : ids.get(options.self);
          if (name) tries.set(name, (tries.get(name) ?? 0) + 1);
          return transact(lock, decide, options);
        };
        await stopNow();
        expect(reasonOf(await (waiters.get("first") as Promise<Outcome>))).toBe("granted");
        await stopNow();
        expect(reasonOf(await (waiters.get("second") as Promise<Outcome>))).toBe("granted");
        // The third was woken by the second's grant and tried; nothing let the fourth or fifth through.
        expect(tries.get("fourth") ?? 0).toBe(0);
        expect(tries.get("fifth") ?? 0).toBe(0);
        expect(tries.get("first")).toBe(1);
      });
    });

    describe("a grant nobody hears", () => {
      test("a client that already went away is granted nothing: nothing is started", async () => {
        const answer = await engine.start(LOCK, holder("ghost"), 0, AbortSignal.abort());
        expect(reasonOf(answer)).toBe("timeout");
        expect(engine.state(LOCK).release).toBeNull();
        expect(await kinds()).toEqual([]);
        expect(reasonOf(await startNow("next"))).toBe("granted");
      });

      test("nor one whose going away the event loop reads right after its request (a half-close, a pipelined request)", async () => {
        const gone = new AbortController();
        const answer = engine.start(LOCK, holder("half-closed"), 0, gone.signal);
        setImmediate(() => gone.abort()); // read in the turn after the request
        expect(reasonOf(await answer)).toBe("timeout");
        expect(await kinds()).toEqual([]);
      });

      test("one granted to a client that goes away as its grant is committed is ended at once (abandoned)", async () => {
        const gone = new AbortController();
        engine.onCommit((h) => {
          if (h.events.some((e) => e.kind === "started")) gone.abort(); // its connection reset just then
        });
        const answer = engine.start(LOCK, holder("reset"), 0, gone.signal);
        expect(reasonOf(await answer)).toBe("timeout");
        expect(engine.state(LOCK).release).toBeNull();
        expect(await kinds()).toEqual(["started", "abandoned"]);
      });

      test("a grant whose abandoning cannot be saved is abandoned once storage works again", async () => {
        const saving = store.transact.bind(store);
        let failing = false;
        (store as { transact: Store["transact"] }).transact = (lock, decide, options) =>
          failing
            ? Promise.resolve({ outcome: STORAGE_FAILED, committed: null, joined: null })
            : saving(lock, decide, options);
        const gone = new AbortController();
        engine.onCommit((h) => {
          if (!h.events.some((e) => e.kind === "started")) return;
          gone.abort(); // gone as its grant was committed, and storage fails just then
          failing = true;
        });
        const answer = engine.start(LOCK, holder("reset"), 0, gone.signal);
        expect(reasonOf(await answer)).toBe("timeout");
        expect(engine.state(LOCK).release?.name).toBe("reset");
        failing = false;
        await clock.advance(1000);
        expect(engine.state(LOCK).release).toBeNull();
        expect(await kinds()).toEqual(["started", "abandoned"]);
      });
    });

    describe("shutdown", () => {
      test("every waiter is answered shutting-down and its leaving is recorded", async () => {
        await startNow("holder");
        const waiter = engine.start(LOCK, holder("waiter"), 60, new AbortController().signal);
        await inLine(1);
        await engine.close();
        expect(reasonOf(await waiter)).toBe("shutting-down");
        const left = (await engine.history(10, LOCK)).find((e) => e.kind === "left-queue");
        expect(left).toMatchObject({ name: "waiter", reason: "shutting down" });
        expect(reasonOf(await startNow("late"))).toBe("shutting-down");
      });
    });

    describe("listeners", () => {
      test("hear every committed change once, with the state before and after", async () => {
        await startNow("sion");
        await startNow("refused");
        await stopNow();
        expect(heard.map((h) => h.events.map((e) => e.kind))).toEqual([["started"], ["stopped"]]);
        expect(heard[0]?.before?.release).toBeNull();
        expect(heard[0]?.after?.release?.name).toBe("sion");
      });
    });

    describe("the urgent lane: urgent waiters ahead of every other, first come first served among them", () => {
      const waitFor = (name: string, urgent?: string) =>
        engine.start(LOCK, { ...holder(name), ...(urgent ? { urgent } : {}) }, 60, new AbortController().signal);
      const served = async (got: Outcome | Promise<Outcome>) => {
        const o = await got;
        return o.ok ? o.next.release?.name : o.reason;
      };

      test("an urgent start waits ahead of the waiters before it, behind the urgent ones before it, and never cuts the running release", async () => {
        await startNow("running");
        const ci = waitFor("ci");
        await inLine(1);
        const hotfix = waitFor("hotfix", "INC-42");
        await inLine(2);
        const second = waitFor("second hotfix", "INC-43");
        await inLine(3);
        expect(engine.state(LOCK).release?.name).toBe("running");
        expect(engine.waiting(LOCK).map((w) => w.name)).toEqual(["hotfix", "second hotfix", "ci"]);
        await stopNow();
        expect(await served(hotfix)).toBe("hotfix");
        await stopNow();
        expect(await served(second)).toBe("second hotfix");
        await stopNow();
        expect(await served(ci)).toBe("ci");
        const events = await engine.history(20, LOCK);
        expect(events.find((e) => e.kind === "waiting" && e.name === "hotfix")?.reason).toBe("urgent: INC-42");
        expect(events.find((e) => e.kind === "started" && e.name === "hotfix")?.reason).toBe("urgent: INC-42");
      });

      test("an urgent start does not pass a block by itself", async () => {
        await engine.change(LOCK, (s, now) => block(s, { name: "ops", reason: "db migration" }, now));
        const hotfix = await engine.start(
          LOCK,
          { ...holder("hotfix"), urgent: "INC-42" },
          0,
          new AbortController().signal,
        );
        expect(reasonOf(hotfix)).toBe("blocked");
      });
    });

    describe("a newest-first line (queue = newest): superseded waiters and stale starts", () => {
      const PROD = "prod";
      beforeEach(() => {
        config.newest = (lock) => lock === PROD || lock === "shared-db";
      });
      const deploy = (name: string, version?: string, wait = 60, extra: { override?: string } = {}) =>
        engine.start(
          PROD,
          { ...holder(name), ...(version === undefined ? {} : { version }), ...extra },
          wait,
          new AbortController().signal,
        );
      const stopProd = () => engine.change(PROD, (s, now) => stop(s, null, { name: "" }, now));
      const prodWaiters = (n: number) =>
        until(async () => engine.waiters.size >= n && engine.waiting(PROD).length === n, `${n} waiters on prod`);

      test("a newer version takes the place of an older waiter of the same claim, which is answered superseded at once", async () => {
        await deploy("running", "1.0", 0);
        const older = deploy("ana", "1.9");
        await prodWaiters(1);
        const newer = deploy("ben", "1.10");
        const passed = await older; // answered while 1.0 still runs
        expect(passed.ok ? "granted" : passed.reason).toBe("superseded");
        expect(passed.ok ? "" : passed.message).toBe("superseded by 1.10 from ben, who now waits in your place");
        expect(engine.state(PROD).release?.name).toBe("running");
        await prodWaiters(1);
        expect(engine.waiting(PROD).map((w) => w.name)).toEqual(["ben"]);
        await stopProd();
        const got = await newer;
        expect(got.ok && got.next.release?.version).toBe("1.10");
        const event = (await engine.history(20, PROD)).find((e) => e.kind === "superseded");
        expect(event).toMatchObject({ name: "ana", version: "1.9", reason: expect.stringContaining("1.10 from ben") });
      });

      test("without versions, the newer arrival supersedes the older waiter", async () => {
        await deploy("running", undefined, 0);
        const first = deploy("ana");
        await prodWaiters(1);
        const second = deploy("ben");
        expect(reasonOf(await first)).toBe("superseded");
        await stopProd();
        expect(reasonOf(await second)).toBe("granted");
      });

      test("a start older than a waiter of the same claim is itself superseded, and the waiter keeps its place", async () => {
        await deploy("running", "1.0", 0);
        const newer = deploy("ben", "2.0");
        await prodWaiters(1);
        const older = await deploy("ana", "1.5");
        expect(older.ok ? "granted" : older.message).toBe("superseded by 2.0 from ben, who waits already");
        expect(engine.waiting(PROD).map((w) => w.name)).toEqual(["ben"]);
        await stopProd();
        expect(reasonOf(await newer)).toBe("granted");
      });

      test("a start supersedes only waiters of its own lane: a newer CI version never takes an urgent waiter's place", async () => {
        await deploy("running", "1.0", 0);
        const hotfix = engine.start(
          PROD,
          { ...holder("hotfix"), version: "1.0.1", urgent: "INC-42" },
          60,
          new AbortController().signal,
        );
        await prodWaiters(1);
        const ci = deploy("ci", "2.0");
        await prodWaiters(2);
        expect(engine.waiting(PROD).map((w) => w.name)).toEqual(["hotfix", "ci"]);
        await stopProd();
        expect(reasonOf(await hotfix)).toBe("granted");
        await stopProd();
        expect(reasonOf(await ci)).toBe("granted");
      });

      test("waiters of another claim are untouched, and so is the running release", async () => {
        await deploy("running", "1.0", 0);
        const both = engine.start(
          [PROD, "shared-db"],
          { ...holder("both"), version: "1.1" },
          60,
          new AbortController().signal,
        );
        await prodWaiters(1);
        const newer = deploy("ben", "3.0");
        await prodWaiters(2);
        expect(engine.waiting(PROD).map((w) => w.name)).toEqual(["both", "ben"]);
        expect(engine.state(PROD).release?.name).toBe("running");
        await stopProd();
        expect(reasonOf(await both)).toBe("granted");
        await stopProd();
        expect(reasonOf(await newer)).toBe("granted");
      });

      test("a start older than the running release is refused stale, and an override passes it", async () => {
        await deploy("ana", "v2.4.0", 0);
        const old = await deploy("ben", "v2.3.9", 0);
        expect(old.ok ? "granted" : old.reason).toBe("stale");
        expect(old.ok ? "" : old.message).toMatch(
          /^v2\.3\.9 is older than v2\.4\.0, released 2026-11-27T09:00:00Z by ana on prod/,
        );
        await stopProd();
        const again = await deploy("ben", "v2.3.9", 0);
        expect(again.ok ? "granted" : again.reason).toBe("stale"); // older than the last finished one too
        const rollback = await deploy("ben", "v2.3.9", 0, { override: "roll back the bad 2.4.0" });
        expect(reasonOf(rollback)).toBe("granted");
      });

      test("stale is decided from the version stored with the lock: once history is pruned and the daemon restarted, an older version is still stale", async () => {
        // A store that keeps two events (memory trims in batches of 1024 beyond its limit: the flood outruns that).
        await engine.close();
        await store.close();
        store = await makeStore(clock.now, 2);
        const reopen = async () => {
          config.newest = (lock) => lock === PROD;
          await open();
        };
        await reopen();
        expect(reasonOf(await deploy("ana", "100", 0))).toBe("granted");
        await stopProd();
        const flood = storeName === "memory" ? 1100 : 5;
        for (let i = 0; i < flood; i++) {
          await engine.start("other", holder("ci"), 0, new AbortController().signal);
          await engine.change("other", (s, now) => stop(s, null, { name: "" }, now));
        }
        expect((await engine.history(10, PROD)).length).toBe(0); // no event of the release of 100 is left
        await engine.close();
        await reopen();
        const old = await deploy("ben", "50", 0);
        expect(old.ok ? "granted" : old.message).toMatch(/^50 is older than 100, released \S+ by ana on prod/);
      });

      test("a lock with a limit compares a start with every release running on it and with the last version granted", async () => {
        config.limitOf = (lock) => (lock === PROD ? 2 : 1);
        expect(reasonOf(await deploy("ana", "10", 0))).toBe("granted");
        expect(reasonOf(await deploy("ops", "8", 0, { override: "roll back one region" }))).toBe("granted");
        expect(reasonOf(await deploy("ben", "9", 0))).toBe("stale"); // older than 10, which still runs
        await engine.change(PROD, (s, now) => stop(s, s.releases[0]?.id ?? null, { name: "" }, now)); // 10 ends
        await stopProd(); // 8 ends: the last version granted was 8
        expect(reasonOf(await deploy("ben", "7", 0))).toBe("stale");
        expect(reasonOf(await deploy("ben", "9", 0))).toBe("granted");
      });

      test("no starvation: a steady stream of newer versions still lets one deploy whenever the lock frees", async () => {
        await deploy("first", "1", 0);
        let newest = deploy("ci", "2");
        await prodWaiters(1);
        for (let v = 3; v <= 6; v++) {
          const next = deploy("ci", String(v));
          expect(reasonOf(await newest)).toBe("superseded");
          newest = next;
          await prodWaiters(1);
        }
        await stopProd();
        const got = await newest;
        expect(got.ok && got.next.release?.version).toBe("6");
        // And the next stream is served as soon as 6 ends: each release's end hands the lock on.
        const seven = deploy("ci", "7");
        await prodWaiters(1);
        await stopProd();
        expect(reasonOf(await seven)).toBe("granted");
      });
    });

    describe("a lock with a limit", () => {
      const LIMITS: Record<string, number> = { "staging/devices": 3, "team0/canary": 2, "team1/canary": 3 };
      beforeEach(() => {
        config.limitOf = (lock) => LIMITS[lock] ?? 1;
      });
      const on = (lock: string, name: string, wait = 0, ttl: number | null = null) =>
        engine.start(lock, holder(name, ttl), wait, new AbortController().signal);
      const stopId = (lock: string, id: number) => engine.change(lock, (s, now) => stop(s, id, { name: "" }, now));
      const holders = (lock: string) => engine.state(lock).releases.map((r) => r.name);

      test("is held by up to its limit; the next is refused full", async () => {
        for (const name of ["a", "b", "c"]) expect(reasonOf(await on("staging/devices", name))).toBe("granted");
        expect(reasonOf(await on("staging/devices", "d"))).toBe("full");
        expect(holders("staging/devices")).toEqual(["a", "b", "c"]);
      });

      test("waiters are granted in order while slots free; a newcomer does not pass them", async () => {
        for (const name of ["a", "b", "c"]) await on("staging/devices", name);
        const w1 = on("staging/devices", "w1", 60);
        await inLine(1);
        const w2 = on("staging/devices", "w2", 60);
        await inLine(2);
        await stopId("staging/devices", 1);
        expect(reasonOf(await w1)).toBe("granted");
        expect(reasonOf(await on("staging/devices", "newcomer"))).toBe("full");
        await stopId("staging/devices", 2);
        expect(reasonOf(await w2)).toBe("granted");
        expect(holders("staging/devices")).toEqual(["c", "w1", "w2"]);
      });

      test("each lease runs out on its own, and its slot goes to the first waiter", async () => {
        await on("staging/devices", "short", 0, 10);
        await on("staging/devices", "long", 0, 100);
        await on("staging/devices", "forever");
        const waiter = on("staging/devices", "waiter", 60);
        await inLine(1);
        await clock.advance(10_000);
        expect(reasonOf(await waiter)).toBe("granted");
        expect(holders("staging/devices")).toEqual(["long", "forever", "waiter"]);
      });

      test("200 concurrent starts and waiters over locks with limits: never more than allowed, waiters served in order", async () => {
        const locks = ["staging/devices", "team0/canary", "team1/canary", "solo"];
        const most = new Map<string, number>();
        engine.onCommit(() => {
          for (const lock of locks) {
            const n = engine.state(lock).releases.length;
            most.set(lock, Math.max(most.get(lock) ?? 0, n)); // checked below: never above the limit
          }
        });
        const claims = Array.from({ length: 200 }, (_, i) =>
          // A one-second lease: each second the clock moves, every release ends and the line moves on.
          on(locks[i % locks.length] as string, `c${i}`, 600, 1),
        );
        const held = () => locks.reduce((n, lock) => n + engine.state(lock).releases.length, 0);
        // Each lock full, or nobody waiting for it: nothing more can happen until the clock moves.
        const settled = () =>
          until(
            async () =>
              engine.waiters.size === engine.waiting().length &&
              locks.every(
                (l) => engine.state(l).releases.length === (LIMITS[l] ?? 1) || engine.waiting(l).length === 0,
              ),
            "every lock full or its line empty",
          );
        await until(async () => held() + engine.waiting().length === 200, "every claim granted or in line");
        for (let second = 0; second < 200 && engine.waiters.size > 0; second++) {
          await settled();
          await clock.advance(1_000);
        }
        const answers = await Promise.all(claims);
        expect(answers.map(reasonOf).filter((r) => r !== "granted")).toEqual([]);
        for (const lock of locks) expect(most.get(lock)).toBe(LIMITS[lock] ?? 1);
        // Served in order: on each lock, those who waited started in the order they joined the line.
        for (const lock of locks) {
          const events = (await engine.history(10_000, lock)).reverse();
          const joined = events.filter((e) => e.kind === "waiting").map((e) => e.name);
          const waited = new Set(joined);
          const served = events.filter((e) => e.kind === "started" && waited.has(e.name)).map((e) => e.name);
          expect(served).toEqual(joined);
        }
      });
    });

    describe("claims of several locks and pools", () => {
      const LIMITS: Record<string, number> = { "staging/devices": 3 };
      const CHILDREN: Record<string, string[]> = { phones: ["phones/a", "phones/b"] };
      beforeEach(() => {
        config.limitOf = (lock) => LIMITS[lock] ?? 1;
        config.childrenOf = (lock) => CHILDREN[lock] ?? [];
      });
      const claim = (locks: string[], name: string, wait = 0, ttl: number | null = null) =>
        engine.start(locks, holder(name, ttl), wait, new AbortController().signal);
      const stopOn = (lock: string, id: number | null) =>
        engine.change(lock, (s, now) => stop(s, id, { name: "" }, now));
      const held = (lock: string) => engine.state(lock).releases.map((r) => r.id);
      const lockOf = (o: Outcome) => (o.ok ? o.locks : undefined);

      test("a claim is one release on every lock it names, with one id", async () => {
        const o = await claim(["prod/eu", "shared-db"], "ana");
        expect(reasonOf(o)).toBe("granted");
        expect(lockOf(o)).toEqual(["prod/eu", "shared-db"]);
        expect(held("prod/eu")).toEqual([1]);
        expect(held("shared-db")).toEqual([1]);
        expect(engine.state("shared-db").release?.locks).toEqual(["prod/eu", "shared-db"]);
      });

      test("all or nothing: a claim one of whose locks is held holds none of them", async () => {
        await claim(["shared-db"], "ana");
        expect(reasonOf(await claim(["prod/eu", "shared-db"], "bo"))).toBe("running");
        expect(held("prod/eu")).toEqual([]);
      });

      test("stopping it by id on any of its locks ends it on all of them, recorded once", async () => {
        await claim(["prod/eu", "shared-db"], "ana");
        expect(reasonOf(await stopOn("shared-db", 1))).toBe("granted");
        expect(held("prod/eu")).toEqual([]);
        expect(held("shared-db")).toEqual([]);
        const stopped = (await engine.history(10, "prod/eu")).filter((e) => e.kind === "stopped");
        expect(stopped).toHaveLength(1);
        expect(stopped[0]?.locks).toEqual(["prod/eu", "shared-db"]);
      });

      test("a stop without an id on one of its locks ends it whole when it is the only release there", async () => {
        await claim(["prod/eu", "shared-db"], "ana");
        expect(reasonOf(await stopOn("prod/eu", null))).toBe("granted");
        expect(held("shared-db")).toEqual([]);
      });

      test("renewing it on one lock renews it on all", async () => {
        await claim(["prod/eu", "shared-db"], "ana", 0, 10);
        await clock.advance(8_000);
        expect(reasonOf(await engine.change("prod/eu", (s, now) => renew(s, 1, 10, now)))).toBe("granted");
        expect(engine.state("shared-db").release?.expiresAt).toBe(T0 + 18_000);
      });

      test("its lease ends it on every lock at once", async () => {
        await claim(["prod/eu", "shared-db"], "ana", 0, 10);
        await clock.advance(10_000);
        await until(async () => held("shared-db").length === 0 && held("prod/eu").length === 0, "both ended");
        const expired = (await engine.history(10)).filter((e) => e.kind === "expired");
        expect(expired).toHaveLength(1);
      });

      test("a pool's grant is stored on the child it took, never under the pool's name", async () => {
        await claim(["phones/*", "shared-db"], "a");
        const stored = await store.readAll();
        expect([...stored.entries.keys()]).not.toContain("phones/*");
        expect(stored.entries.get("phones/a")?.releases.map((r) => r.id)).toEqual([1]);
      });

      test("a pool takes the child free the longest, ties by name", async () => {
        expect(lockOf(await claim(["phones/*"], "a"))).toEqual(["phones/a"]);
        expect(lockOf(await claim(["phones/*"], "b"))).toEqual(["phones/b"]);
        expect(reasonOf(await claim(["phones/*"], "c"))).toBe("running");
        await stopOn("phones/b", null);
        await clock.advance(1_000);
        await stopOn("phones/a", null);
        // phones/b came free first: it has been free the longest.
        expect(lockOf(await claim(["phones/*"], "d"))).toEqual(["phones/b"]);
      });

      test("a waiting claim is granted whole once its last lock frees", async () => {
        await claim(["prod/eu"], "ana");
        await claim(["shared-db"], "bo");
        const waiter = claim(["prod/eu", "shared-db"], "cy", 60);
        await inLine(1);
        await stopOn("prod/eu", null);
        expect(held("prod/eu")).toEqual([]); // not part of it while shared-db is held
        await stopOn("shared-db", null);
        const o = await waiter;
        expect(reasonOf(o)).toBe("granted");
        expect(held("prod/eu")).toEqual([3]);
        expect(held("shared-db")).toEqual([3]);
      });

      test("a newcomer never passes a waiting claim it overlaps; one that overlaps no waiter starts at once", async () => {
        await claim(["prod/eu"], "ana");
        const waiter = claim(["prod/eu", "shared-db"], "bo", 60);
        await inLine(1);
        expect(reasonOf(await claim(["shared-db"], "cy"))).toBe("queued");
        expect(reasonOf(await claim(["prod"], "cy"))).toBe("running");
        expect(reasonOf(await claim(["staging"], "dee"))).toBe("granted");
        await stopOn("prod/eu", null);
        expect(reasonOf(await waiter)).toBe("granted");
      });

      test("a pool overlaps each of its declared children in the line", async () => {
        await claim(["phones/*"], "a");
        await claim(["phones/*"], "b");
        const waiter = claim(["phones/*"], "c", 60);
        await inLine(1);
        await stopOn("phones/a", null);
        expect(lockOf(await waiter)).toEqual(["phones/a"]);
        // A pool's waiter kept out by another lock of its claim: a newcomer on a free child does not pass it.
        await claim(["shared-db"], "d");
        await stopOn("phones/b", null);
        const second = claim(["phones/*", "shared-db"], "e", 60);
        await inLine(1);
        expect(reasonOf(await claim(["phones/b"], "f"))).toBe("queued");
        await stopOn("shared-db", null);
        expect(lockOf(await second)).toEqual(["phones/b", "shared-db"]);
      });

      test("200 concurrent claims mixing pools, limits and several locks: never more than allowed, overlapping waiters served in order", async () => {
        const shapes = [
          ["prod/eu", "shared-db"],
          ["phones/*"],
          ["staging/devices", "prod/us"],
          ["prod"],
          ["phones/*", "shared-db"],
          ["staging/devices"],
        ];
        const locks = ["prod", "prod/eu", "prod/us", "shared-db", "staging/devices", "phones/a", "phones/b"];
        const problems: string[] = [];
        engine.onCommit(() => {
          for (const lock of locks) {
            const s = engine.state(lock);
            if (s.releases.length > (LIMITS[lock] ?? 1)) problems.push(`${lock} held by ${s.releases.length}`);
            for (const r of s.releases)
              for (const other of r.locks ?? [])
                if (!engine.state(other).releases.some((x) => x.id === r.id))
                  problems.push(`#${r.id} on ${lock}, not ${other}`);
          }
          const prod = engine.state("prod").releases.length > 0;
          if (prod && (engine.state("prod/eu").releases.length > 0 || engine.state("prod/us").releases.length > 0))
            problems.push("prod held with a lock under it");
        });
        const answers = Array.from({ length: 200 }, (_, i) =>
          claim(shapes[i % shapes.length] as string[], `c${i}`, 600, 1),
        );
        const holding = () => new Set(locks.flatMap((l) => engine.state(l).releases.map((r) => r.id))).size;
        await until(async () => holding() + engine.waiting().length === 200, "every claim granted or in line");
        // Nothing more can happen until the clock moves: no commit on its way, every waiter asleep.
        const quiet = () => engine.committing === 0 && engine.waiters.size === engine.waiting().length;
        for (let second = 0; second < 400 && engine.waiters.size > 0; second++) {
          // Twice, a moment apart: a waiter woken in between would be trying again.
          await until(async () => quiet() && (await Bun.sleep(5).then(quiet)), "the engine quiet");
          await clock.advance(1_000);
        }
        const outcomes = await Promise.all(answers);
        expect(outcomes.map(reasonOf).filter((r) => r !== "granted")).toEqual([]);
        expect(problems).toEqual([]);
        // Served in order: of two waiters whose claims overlap, the one that joined first started first.
        const events = (await engine.history(10_000)).reverse();
        const joined = events.filter((e) => e.kind === "waiting").map((e) => e.name);
        const startedAt = new Map(events.filter((e) => e.kind === "started").map((e, i) => [e.name, i]));
        const reachOf = (name: string) =>
          (shapes[Number(name.slice(1)) % shapes.length] as string[]).flatMap((l) =>
            l.endsWith("/*") ? (CHILDREN[l.slice(0, -2)] ?? []) : [l],
          );
        const overlap = (a: string[], b: string[]) =>
          a.some((x) => b.some((y) => x === y || y.startsWith(`${x}/`) || x.startsWith(`${y}/`)));
        const passed: string[] = [];
        joined.forEach((a, i) => {
          for (const b of joined.slice(i + 1))
            if (overlap(reachOf(a), reachOf(b)) && (startedAt.get(b) ?? 0) < (startedAt.get(a) ?? 0))
              passed.push(`${b} passed ${a}`);
        });
        expect(passed).toEqual([]);
      });
    });

    describe("locks in a tree", () => {
      const on = (lock: string, name: string, wait = 0, signal = new AbortController().signal) =>
        engine.start(lock, holder(name), wait, signal);
      const stopOn = (lock: string) => engine.change(lock, (s, now) => stop(s, null, { name: "" }, now));
      const blockOnLock = (lock: string, name: string) =>
        engine.change(lock, (s, now) => block(s, { name, reason: "freeze" }, now));

      test("unrelated locks and siblings are independent", async () => {
        expect(reasonOf(await on("staging", "a"))).toBe("granted");
        expect(reasonOf(await on("prod/eu", "b"))).toBe("granted");
        expect(reasonOf(await on("prod/us", "c"))).toBe("granted");
      });

      test("a release on a lock keeps its ancestors from starting, naming the release that holds it", async () => {
        await on("prod/eu", "sion");
        const answer = await on("prod", "bob");
        expect(reasonOf(answer)).toBe("running");
        expect(answer.ok ? "" : answer.message).toMatch(/^release #1 by sion on prod\/eu running since/);
      });

      test("a release on a lock keeps every lock under it from starting", async () => {
        await on("prod", "sion");
        expect(reasonOf(await on("prod/eu", "a"))).toBe("running");
        expect(reasonOf(await on("prod/us/payments", "b"))).toBe("running");
        expect(reasonOf(await on("staging", "c"))).toBe("granted");
      });

      test("one id counter across all locks", async () => {
        const ids = [idOf(await on("a", "x")), idOf(await on("b", "y")), idOf(await on("c/d", "z"))];
        expect(ids).toEqual([1, 2, 3]);
      });

      test("a block on a lock blocks it and everything under it, with the nearest block's words", async () => {
        await blockOnLock("prod", "ana");
        const refused = await on("prod/eu", "sion");
        expect(reasonOf(refused)).toBe("blocked");
        expect(refused.ok ? "" : refused.message).toMatch(/^releasing on prod blocked by ana since/);
        await blockOnLock("prod/eu", "bob");
        const nearer = await on("prod/eu/x", "sion");
        expect(nearer.ok ? "" : nearer.message).toMatch(/^releasing on prod\/eu blocked by bob/);
        expect(reasonOf(await on("staging", "c"))).toBe("granted");
      });

      test("the root's block blocks every lock; unblocking a lock lifts only its own block", async () => {
        await blockOnLock(ROOT, "ana");
        await blockOnLock("prod", "bob");
        expect(reasonOf(await on("staging", "x"))).toBe("blocked");
        expect(reasonOf(await engine.change("prod", (s, now) => unblock(s, { name: "bob" }, now)))).toBe("granted");
        expect(reasonOf(await on("prod", "x"))).toBe("blocked"); // still blocked from above
        expect(reasonOf(await engine.change("prod", (s, now) => unblock(s, { name: "bob" }, now)))).toBe("not-blocked");
        expect(reasonOf(await engine.change(ROOT, (s, now) => unblock(s, { name: "ana" }, now)))).toBe("granted");
        expect(reasonOf(await on("prod", "x"))).toBe("granted");
      });

      test("a release that ran out on a lock below is ended when a lock above starts", async () => {
        await engine.start("prod/eu", holder("short", 5), 0, new AbortController().signal);
        clock.jump(6_000);
        expect(reasonOf(await on("prod", "after"))).toBe("granted");
        expect((await engine.history(10)).map((e) => `${e.kind} ${e.lock}`).reverse()).toEqual([
          "started prod/eu",
          "expired prod/eu",
          "started prod",
        ]);
      });

      test("a waiter for a whole subtree is not starved by a stream of starts on its parts", async () => {
        await on("prod/eu", "first");
        const whole = on("prod", "whole", 60);
        await inLine(1);
        // prod/us is free, but someone who overlaps it has waited longer.
        expect(reasonOf(await on("prod/us", "newcomer"))).toBe("queued");
        await stopOn("prod/eu");
        const got = await whole;
        expect(got.ok && got.next.release?.name).toBe("whole");
      });

      test("waiters on unrelated locks never delay each other", async () => {
        await on("prod", "holder");
        const waiting = on("prod/eu", "patient", 60);
        await inLine(1);
        expect(reasonOf(await on("staging", "unrelated"))).toBe("granted");
        await stopOn("prod");
        expect((await waiting).ok).toBe(true);
      });

      test("200 concurrent starts spread over 10 locks: exactly one granted per lock", async () => {
        const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => on(`team${i % 10}/app`, `racer${i}`)));
        const granted = answers.filter((o) => o.ok).map((o) => (o.ok ? o.next.lock : ""));
        expect(granted.sort()).toEqual(Array.from({ length: 10 }, (_, i) => `team${i}/app`).sort());
        const ids = answers.filter((o) => o.ok).map(idOf);
        expect(new Set(ids).size).toBe(10);
      });
    });

    describe("restart", () => {
      test("a lease that ran out while the daemon was down ends when it opens, and says so", async () => {
        if (storeName === "memory") return; // memory keeps nothing across a restart
        await startNow("sion", 5);
        await engine.close();
        await clock.advance(6_000);
        const { expired } = await open();
        expect(expired.map((e) => e.kind)).toEqual(["expired"]);
        expect(engine.state(LOCK).release).toBeNull();
      });
    });

    describe("the freeze calendar", () => {
      // T0 is 09:00 UTC: this window is in force from 08:00 to 09:10 on the default lock and below it.
      const window = (from = "2026-11-27 08:00", until = "2026-11-27 09:10", locks = [LOCK]) =>
        parseWindow({ reason: "test freeze", locks, from, until }) as Window;
      const THAW = Date.parse("2026-11-27T09:10:00Z");
      const calendar = async (...windows: Window[]) => {
        keepCalendar(engine, windows, clock);
        await calendarSettled();
      };
      afterEach(() => stopCalendar());
      const on = (lock: string, name: string) => engine.start(lock, holder(name), 0, new AbortController().signal);
      const boundaries = async () =>
        (await engine.history(100, ROOT))
          .filter((e) => e.kind === "frozen" || e.kind === "thawed")
          .map((e) => `${e.kind} ${e.lock} ${new Date(e.at).toISOString().slice(11, 16)}`)
          .reverse();

      test("a start is refused frozen while a window covers the lock, saying until when", async () => {
        await calendar(window());
        const refused = await startNow("sion");
        expect(refused).toMatchObject({ ok: false, reason: "frozen", until: THAW });
        expect(refused.ok ? "" : refused.message).toBe("releasing is frozen until Fri 09:10 UTC (test freeze)");
        expect(reasonOf(await on("default/eu", "sion"))).toBe("frozen");
        expect(reasonOf(await on("staging", "sion"))).toBe("granted");
      });

      test("an override starts during a freeze and is recorded as such, with its reason and who", async () => {
        await calendar(window());
        const o = await engine.start(
          LOCK,
          { ...holder("ops"), override: "hotfix", by: "ops" },
          0,
          new AbortController().signal,
        );
        expect(o.ok).toBe(true);
        const [started, overridden] = await engine.history(2, LOCK);
        expect(started).toMatchObject({ kind: "started", name: "ops", by: "ops" });
        expect(overridden).toMatchObject({ kind: "overridden", name: "ops", by: "ops", releaseId: idOf(o) });
        expect(overridden?.reason).toStartWith("hotfix (over: releasing is frozen until");
      });

      describe("an override is not queued behind waiters that wait only for the freeze", () => {
        const wait = (lock: string | string[], name: string, extra: { override?: string; version?: string } = {}) =>
          engine.start(lock, { ...holder(name), ...extra }, 3600, new AbortController().signal);
        const stopOn = (lock: string) => engine.change(lock, (s, now) => stop(s, null, { name: "" }, now));

        test("an override waiting for the running release starts when it ends, ahead of an earlier claim the freeze stops", async () => {
          await calendar(window());
          expect(
            reasonOf(
              await engine.start(LOCK, { ...holder("first"), override: "INC-A" }, 0, new AbortController().signal),
            ),
          ).toBe("granted");
          const ci = wait([LOCK, "u7"], "ci");
          await inLine(1);
          const oncall = wait(LOCK, "oncall", { override: "INC-B" });
          await inLine(2);
          await stopOn(LOCK);
          expect(reasonOf(await oncall)).toBe("granted");
          expect(engine.waiting().map((w) => w.name)).toEqual(["ci"]); // still waiting for the freeze to end
          await engine.close();
          expect(reasonOf(await ci)).toBe("shutting-down");
        });

        test("overrides are served first come, first served among themselves", async () => {
          await calendar(window());
          await engine.start(LOCK, { ...holder("first"), override: "INC-A" }, 0, new AbortController().signal);
          const a = wait(LOCK, "a", { override: "INC-B" });
          await inLine(1);
          const b = wait(LOCK, "b", { override: "INC-C" });
          await inLine(2);
          await stopOn(LOCK);
          expect(reasonOf(await a)).toBe("granted");
          expect(engine.waiting().map((w) => w.name)).toEqual(["b"]);
          await stopOn(LOCK);
          expect(reasonOf(await b)).toBe("granted");
        });

        test("on a newest-first lock, a newer start the freeze stops never supersedes an override, nor does its waiter supersede one", async () => {
          config.newest = (lock) => lock === "prod";
          await calendar(window("2026-11-27 08:00", "2026-11-27 09:10", ["prod"]));
          await engine.start(
            "prod",
            { ...holder("first"), version: "8", override: "INC-A" },
            0,
            new AbortController().signal,
          );
          const ciFirst = wait("prod", "ci-10", { version: "10" });
          await inLine(1);
          const oncall = wait("prod", "oncall-9", { version: "9", override: "INC-B" });
          await inLine(2);
          const ciLater = wait("prod", "ci-11", { version: "11" }); // supersedes ci-10, not the override
          expect(reasonOf(await ciFirst)).toBe("superseded");
          await inLine(2);
          expect(engine.waiting("prod").map((w) => w.name)).toEqual(["oncall-9", "ci-11"]);
          await stopOn("prod");
          expect(reasonOf(await oncall)).toBe("granted");
          await engine.close();
          expect(reasonOf(await ciLater)).toBe("shutting-down");
        });

        test("an override kept in line during a freeze passes no version released after it joined: no roll back once the freeze ends", async () => {
          config.newest = (lock) => lock === "prod";
          await calendar(window("2026-11-27 08:00", "2026-11-27 09:10", ["prod"]));
          await engine.start(
            "prod",
            { ...holder("r"), version: "1", override: "INC-A" },
            0,
            new AbortController().signal,
          );
          const ci = wait("prod", "ci-20", { version: "20" });
          await inLine(1);
          const oncall = wait("prod", "oncall-10", { version: "10", override: "INC-B" }); // kept: the freeze stops ci
          await inLine(2);
          await clock.advance(THAW - T0 + 1); // the freeze ends while r still runs: ci is first in line again
          await stopOn("prod");
          expect(reasonOf(await ci)).toBe("granted");
          await stopOn("prod");
          expect(reasonOf(await oncall)).toBe("stale"); // 20 went out after it joined: 10 would roll it back
        });
      });

      test("a release already running is not cut when a freeze begins", async () => {
        const id = idOf(await startNow("sion"));
        expect(id).toBeDefined();
        await calendar(window());
        expect(engine.state(LOCK).release?.id).toBe(id);
        expect(reasonOf(await engine.change(LOCK, (s, now) => stop(s, id ?? null, { name: "sion" }, now)))).toBe(
          "granted",
        );
      });

      test("a waiter waits through the freeze and takes the release when it ends", async () => {
        await calendar(window());
        const waiter = engine.start(LOCK, holder("patient"), 3600, new AbortController().signal);
        await inLine(1);
        await clock.advance(THAW - T0 + 1); // the calendar records the thaw, which wakes the waiter
        expect(reasonOf(await waiter)).toBe("granted");
        const [started, thawed] = await engine.history(2, LOCK);
        expect([thawed?.kind, started?.kind]).toEqual(["thawed", "started"]); // the thaw first, then the start
      });

      test("a waiter whose wait ends before the freeze does is told timeout", async () => {
        await calendar(window());
        const waiter = engine.start(LOCK, holder("impatient"), 60, new AbortController().signal);
        await inLine(1);
        await clock.advance(60_000);
        expect(reasonOf(await waiter)).toBe("timeout");
      });

      test("a waiter's timeout names what holds the lock at the timeout, not what refused it when it joined", async () => {
        const first = idOf(await startNow("sion")); // refuses the waiter as it joins
        await calendar(window("2026-11-27 09:05", "2026-11-27 10:00"));
        const waiter = engine.start(LOCK, holder("patient"), 600, new AbortController().signal);
        await inLine(1);
        await clock.advance(6 * 60_000); // the freeze begins at 09:05
        await engine.change(LOCK, (s, now) => stop(s, first ?? null, { name: "sion" }, now)); // the waiter tries: frozen
        await clock.advance(4 * 60_000);
        const o = await waiter;
        expect(reasonOf(o)).toBe("timeout");
        expect(o.ok ? "" : o.message).toBe("waited 600s; releasing is frozen until Fri 10:00 UTC (test freeze)");
      });

      test("each boundary is recorded once, on each lock the window names, also across a restart", async () => {
        await calendar(window(undefined, undefined, ["prod", "staging"]));
        expect(await boundaries()).toEqual(["frozen prod 08:00", "frozen staging 08:00"]);
        await clock.advance(THAW - T0 + 1);
        await calendarSettled();
        expect(await boundaries()).toEqual([
          "frozen prod 08:00",
          "frozen staging 08:00",
          "thawed prod 09:10",
          "thawed staging 09:10",
        ]);
        if (storeName === "memory") return; // memory keeps nothing across a restart
        stopCalendar();
        await engine.close();
        await open();
        await calendar(window(undefined, undefined, ["prod", "staging"]));
        expect(await boundaries()).toHaveLength(4);
      });

      test("a boundary missed while the daemon was down is recorded when it is back", async () => {
        if (storeName === "memory") return; // memory keeps nothing across a restart
        await calendar(window());
        expect(await boundaries()).toEqual(["frozen default 08:00"]);
        stopCalendar();
        await engine.close();
        clock.jump(THAW - T0 + 60_000);
        await open();
        await calendar(window());
        expect(await boundaries()).toEqual(["frozen default 08:00", "thawed default 09:10"]);
      });

      test("a window seen for the first time after it ended writes no history", async () => {
        await calendar(window("2026-11-27 07:00", "2026-11-27 08:00"));
        expect(await boundaries()).toEqual([]);
        expect(reasonOf(await startNow("sion"))).toBe("granted");
      });

      test("a reload that removes a window in force records the thaw now, and its waiters try again at once", async () => {
        await calendar(window());
        const waiter = engine.start(LOCK, holder("patient"), 3600, new AbortController().signal);
        await inLine(1);
        replaceCalendar([]);
        expect(reasonOf(await waiter)).toBe("granted");
        await calendarSettled();
        expect(await boundaries()).toEqual(["frozen default 08:00", "thawed default 09:00"]);
        expect((await engine.history(10, LOCK)).find((e) => e.kind === "thawed")?.reason).toBe(
          "test freeze (removed from the calendar)",
        );
      });

      test("a reload that only edits a window in force is the same freeze: no thaw, no second start", async () => {
        await calendar(window());
        replaceCalendar([{ ...window(), reason: "test freeze, edited" }]);
        await calendarSettled();
        await clock.advance(60_000);
        await calendarSettled();
        expect(await boundaries()).toEqual(["frozen default 08:00"]);
        expect(reasonOf(await startNow("sion"))).toBe("frozen");
      });

      describe("across reloads, the history says when the lock was frozen, in time order", () => {
        const reload = async (...windows: Window[]) => {
          replaceCalendar(windows);
          await calendarSettled();
        };
        const other = (from: string, until: string) => ({ ...window(from, until), reason: "other freeze" });

        test("a window moved out of force and back: thawed at the first reload, frozen again at the second", async () => {
          await calendar(window());
          await clock.advance(60_000);
          await reload(window("2026-11-27 12:00", "2026-11-27 13:00"));
          await clock.advance(60_000);
          await reload(window());
          expect(await boundaries()).toEqual(["frozen default 08:00", "thawed default 09:01", "frozen default 09:02"]);
          expect(reasonOf(await startNow("sion"))).toBe("frozen");
        });

        test("a second window added while the lock is frozen records nothing; the thaw comes when the last ends", async () => {
          await calendar(window());
          await clock.advance(60_000);
          await reload(window(), other("2026-11-27 08:30", "2026-11-27 09:30"));
          expect(await boundaries()).toEqual(["frozen default 08:00"]);
          await clock.advance(30 * 60_000 + 1);
          await calendarSettled();
          expect(await boundaries()).toEqual(["frozen default 08:00", "thawed default 09:30"]);
        });

        test("removing one of two overlapping windows records nothing while the other keeps the lock frozen", async () => {
          await calendar(window(), other("2026-11-27 08:30", "2026-11-27 09:30"));
          await clock.advance(60_000);
          await reload(other("2026-11-27 08:30", "2026-11-27 09:30"));
          expect(await boundaries()).toEqual(["frozen default 08:00"]);
          expect(reasonOf(await startNow("sion"))).toBe("frozen");
        });
      });

      test("an occurrence that began and ended while the daemon was down is recorded, its start before its end", async () => {
        if (storeName === "memory") return; // memory keeps nothing across a restart
        await calendar(window("2026-11-27 09:30", "2026-11-27 10:00")); // seen, not yet in force
        expect(await boundaries()).toEqual([]);
        stopCalendar();
        await engine.close();
        clock.jump(2 * 3_600_000);
        await open();
        await calendar(window("2026-11-27 09:30", "2026-11-27 10:00"));
        expect(await boundaries()).toEqual(["frozen default 09:30", "thawed default 10:00"]);
      });

      test("a window that comes back every few minutes records each end at its own time", async () => {
        const often = parseWindow({
          reason: "often",
          locks: [LOCK],
          start: "*/2 * * * *",
          end: "1-59/2 * * * *",
        }) as Window;
        await calendar(often);
        await clock.advance(4 * 60_000 + 1); // each boundary is looked at a millisecond after it
        await calendarSettled();
        expect(await boundaries()).toEqual([
          "frozen default 09:00",
          "thawed default 09:01",
          "frozen default 09:02",
          "thawed default 09:03",
          "frozen default 09:04",
        ]);
      });

      test("a window on every lock records its boundaries on the root", async () => {
        await calendar(
          parseWindow({ reason: "holidays", from: "2026-11-27 08:00", until: "2026-11-27 09:10" }) as Window,
        );
        expect(await boundaries()).toEqual(["frozen  08:00"]);
        expect(reasonOf(await on("prod/eu", "sion"))).toBe("frozen");
      });
    });

    describe("lock names that hold nothing are forgotten", () => {
      // Started with stage's token: a token's share counts the names it holds.
      const on = (lock: string, ttl: number | null = null, room?: Room) =>
        engine.start(lock, { ...holder("sion", ttl), by: "stage" }, 0, new AbortController().signal, undefined, room);
      const stored = async () => (await store.readAll()).entries;

      test("a lock whose release stopped or ran out is no longer stored; its history stays", async () => {
        await on("staging/a");
        await engine.change("staging/a", (s, now) => stop(s, null, { name: "" }, now));
        await on("staging/b", 5);
        await clock.advance(5_000);
        expect([...(await stored()).keys()].filter((l) => l.startsWith("staging"))).toEqual([]);
        expect(engine.state("staging/b").release).toBeNull();
        expect((await engine.history(10, "staging")).map((e) => `${e.kind} ${e.lock}`)).toEqual([
          "expired staging/b",
          "started staging/b",
          "stopped staging/a",
          "started staging/a",
        ]);
      });

      test("a name used again starts above the version it was forgotten at, so no cache takes it for an older answer", async () => {
        const before = (await on("staging/a")).ok && (await stored()).get("staging/a")?.version;
        await engine.change("staging/a", (s, now) => stop(s, null, { name: "" }, now));
        await on("staging/a");
        expect((await stored()).get("staging/a")?.version).toBeGreaterThan((before || 0) + 1);
      });

      test("beyond the room, a change that would store a new name is refused and changes nothing; one on a stored name is not", async () => {
        const room: Room = { most: 2, share: { who: "stage", locks: ["staging"], most: 1 } };
        expect(reasonOf(await on("staging/a", null, room))).toBe("granted");
        const refused = await on("staging/b", null, room);
        expect(refused.ok ? "" : refused.message).toContain("stage's token may hold under staging (1,");
        expect(
          reasonOf(await engine.change("staging/a", (s, now) => block(s, { name: "ana", reason: "" }, now), room)),
        ).toBe("granted");
        expect(reasonOf(await on("prod/eu", null, { most: 2, share: null }))).toBe("granted");
        const full = await on("prod/us", null, { most: 2, share: null });
        expect(full.ok ? "" : `${full.reason}: ${full.message}`).toContain(
          "invalid: lock prod/us would be one lock more than RS_MAX_LOCKS (2)",
        );
        expect([...(await stored()).keys()].filter((l) => l.includes("/")).sort()).toEqual(["prod/eu", "staging/a"]);
      });
    });
  });
}

describe("engine instances", () => {
  test("two engines in one process share nothing: a start on one does not show on the other", async () => {
    const clock = testClock();
    const one = createEngine({ store: openMemoryStore(10_000, clock.now), clock });
    const other = createEngine({ store: openMemoryStore(10_000, clock.now), clock });
    await one.open();
    await other.open();
    const heardByOther: Heard[] = [];
    other.onCommit((h) => heardByOther.push(h));
    const granted = await one.start(LOCK, holder("sion"), 0, new AbortController().signal);
    expect(reasonOf(granted)).toBe("granted");
    expect(one.state(LOCK).release?.name).toBe("sion");
    expect(other.state(LOCK).release).toBeNull();
    expect(heardByOther).toEqual([]);
    // The other's lock is free, and its ids count on their own.
    const second = await other.start(LOCK, holder("ana"), 0, new AbortController().signal);
    expect([reasonOf(second), idOf(second)]).toEqual(["granted", 1]);
    expect(one.state(LOCK).release?.name).toBe("sion");
    await one.close();
    await other.close();
  });
});
