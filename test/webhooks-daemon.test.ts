// Webhooks from the daemon itself: a kill -9 right after a commit loses no
// event, a receiver that hangs does not hold up answers, /webhooks shows a
// webhook by its host only, webhook-test, and (on PostgreSQL) three replicas
// deliver every event, none twice without faults. Real receivers (Bun.serve).
import { afterEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import type { Server } from "bun";
import { configFile, type Daemon, daemonsPerTest, freshDb, runBinary, until } from "./daemon.ts";

const startDaemon = daemonsPerTest();
const receivers: Server<undefined>[] = [];
afterEach(() => {
  for (const r of receivers.splice(0)) r.stop(true);
});

/** A receiver that records what it was sent (event ids and data) and answers as the test says. */
function receiver(answer: () => Response | Promise<Response> = () => new Response("ok")) {
  const got: { id: string; type: string; name: string; releaseId: number | null }[] = [];
  let respond = answer;
  const server = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(req) {
      const body = JSON.parse(await req.text());
      got.push({
        id: req.headers.get("webhook-id") ?? "",
        type: body.type,
        name: body.data?.name,
        releaseId: body.data?.releaseId ?? null,
      });
      return respond();
    },
  });
  receivers.push(server);
  return {
    url: `http://127.0.0.1:${server.port}/hooks/a-secret-path`,
    got,
    answerWith: (f: () => Response | Promise<Response>) => {
      respond = f;
    },
  };
}

const webhookConfig = (url: string, extra = "") => configFile(`[[webhook]]\nurl = "${url}"\n${extra}`);
const statusOfHooks = async (d: Daemon) => (await (await d.get("/webhooks?format=json")).json()).webhooks;

// A start by "slow" whose commit a trigger holds back a second after its event took its sequence number: the
// request, once the database is sleeping on it.
async function startHeldBack(admin: InstanceType<typeof Bun.SQL>, d: Daemon): Promise<{ slow: Promise<string> }> {
  await admin.unsafe(`CREATE FUNCTION rs_test_slow() RETURNS trigger LANGUAGE plpgsql AS
      $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
    CREATE TRIGGER rs_test_slow AFTER INSERT ON releasestatus_events FOR EACH ROW
      WHEN (NEW.name = 'slow' AND NEW.kind = 'started') EXECUTE FUNCTION rs_test_slow();`);
  const slow = d.body("/locks/s/start?name=slow");
  await until(
    async () => Number((await admin`SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep'`)[0].n) > 0,
    "the start of slow to hold back its commit",
  );
  return { slow }; // not awaited here: it answers once the commit comes
}

// Once the release of `name` on lock s is stopped and that heard: every committed event was delivered, or at
// least counted as dropped, never skipped unseen.
async function expectEveryEventOf(d: Daemon, r: { got: { type: string; name?: string }[] }, name: string) {
  expect(await d.body("/locks/s/stop")).toBe("1\n");
  await until(async () => r.got.some((g) => g.type === "release.stopped"), `the stop of ${name}`);
  const [hook] = await statusOfHooks(d);
  expect({
    started: r.got.some((g) => g.type === "release.started" && g.name === name),
    dropped: hook.dropped,
  }).toEqual({ started: true, dropped: 0 });
}

describe("delivery survives a crash", () => {
  test("kill -9 right after commits: every event arrives after the restart, in order", async () => {
    const r = receiver(() => new Promise(() => {})); // hangs: nothing is acknowledged before the crash
    const db = await freshDb();
    const config = webhookConfig(r.url);
    const d = await startDaemon({ RS_DB: db, RS_CONFIG: config });
    const answers: string[] = [];
    for (let i = 1; i <= 10; i++) {
      answers.push(await d.body(`/start?name=crash${i}`));
      answers.push(await d.body("/stop"));
    }
    expect(answers.every((a) => a === "1\n")).toBe(true);
    await d.stop("SIGKILL");
    r.answerWith(() => new Response("ok"));
    const again = await startDaemon({ RS_DB: db, RS_CONFIG: config });
    // On PostgreSQL the dead replica's claim on the webhook lapses first (30 s).
    await until(async () => (await statusOfHooks(again))[0]?.deliveries.delivered >= 20, "20 deliveries", 60_000);
    const delivered = r.got.filter((g) => g.name !== undefined);
    // Every acknowledged change is there, in order (the first may have been sent twice: no 2xx came back).
    const distinct = [...new Map(delivered.map((g) => [g.id, g])).values()];
    expect(distinct.map((g) => `${g.type} ${g.releaseId}`)).toEqual(
      Array.from({ length: 10 }, (_, i) => [`release.started ${i + 1}`, `release.stopped ${i + 1}`]).flat(),
    );
    expect(delivered.length - distinct.length).toBeLessThanOrEqual(1);
    console.log(
      `crash test: 20 acknowledged changes, ${distinct.length} distinct events delivered after kill -9 and restart, ${delivered.length - distinct.length} sent twice`,
    );
  }, 90_000);
});

describe("a webhook is never in the way", () => {
  test("with a receiver that hangs, starts and stops are answered, and the attempt is cut at 5 s", async () => {
    const r = receiver(() => new Promise(() => {}));
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: webhookConfig(r.url) });
    for (let i = 0; i < 20; i++) {
      expect(await d.body(`/start?name=s${i}`)).toBe("1\n");
      expect(await d.body("/stop")).toBe("1\n");
    }
    await until(async () => (await statusOfHooks(d))[0]?.lastFailure !== null, "the first attempt cut", 15_000);
    expect((await statusOfHooks(d))[0].lastFailure.error).toBe("no answer within 5 s");
  });

  test("/webhooks names a webhook by its host only, never its path or secret", async () => {
    const r = receiver();
    const secret = `whsec_${Buffer.from(new Uint8Array(32).fill(7)).toString("base64")}`;
    const d = await startDaemon({
      RS_DB: await freshDb(),
      RS_CONFIG: webhookConfig(r.url, `secret = "${secret}"\n`),
    });
    await d.body("/start?name=sion");
    await until(async () => {
      const [w] = await statusOfHooks(d);
      return w?.deliveries.delivered === 1 && w.backlog === 0; // its backlog as of its next look
    }, "a delivery");
    const [w] = await statusOfHooks(d);
    expect(w).toMatchObject({ webhook: new URL(r.url).host, format: "standard", disabled: null, backlog: 0 });
    expect(w.lastSuccess.status).toBe(200);
    for (const page of [
      await d.body("/webhooks"),
      await d.body("/webhooks?format=json"),
      await d.body("/metrics"),
      d.output(),
    ]) {
      expect(page).not.toContain("a-secret-path");
      expect(page).not.toContain(secret);
    }
    expect(await d.body("/metrics")).toContain(
      `releasestatus_webhook_deliveries_total{webhook="${new URL(r.url).host}",result="delivered"} 1`,
    );
  });

  test("a bad [[webhook]] stops start-up with the file's line, and the URL is not shown", async () => {
    const file = configFile('[[webhook]]\nurl = "https://hooks.example.com/T0/B0/SECRET"\nformat = "discord"\n');
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_CONFIG: file });
    expect(code).toBe(2);
    expect(stderr).toContain(`${file}:3: format = "discord" is not valid`);
    expect(stderr).not.toContain("SECRET");
  });
});

describe("releasestatus webhook-test", () => {
  test("sends a ping to each webhook and prints how it answered; exit 1 when one did not accept", async () => {
    const ok = receiver();
    const gone = receiver(() => new Response("nope", { status: 404 }));
    const file = configFile(`[[webhook]]\nurl = "${ok.url}"\n\n[[webhook]]\nurl = "${gone.url}"\nformat = "slack"\n`);
    const all = await runBinary(["webhook-test"], { RS_CONFIG: file });
    expect(all.code).toBe(1);
    expect(all.stdout).toContain(`1. ${new URL(ok.url).host} (standard): 200 ok`);
    expect(all.stdout).toContain("(slack): 404 nope  <- not accepted");
    expect(ok.got[0]?.type).toBe("ping");
    const one = await runBinary(["webhook-test", "--webhook", "1"], { RS_CONFIG: file });
    expect(one.code).toBe(0);
    expect((await runBinary(["webhook-test", "--webhook", "3"], { RS_CONFIG: file })).code).toBe(2);
  });
});

describe("replicas on PostgreSQL", () => {
  test.skipIf(!process.env.RS_TEST_DB)(
    "three replicas deliver every event, and without faults none twice",
    async () => {
      const r = receiver();
      const db = await freshDb();
      const config = webhookConfig(r.url);
      const replicas = await Promise.all([1, 2, 3].map(() => startDaemon({ RS_DB: db, RS_CONFIG: config })));
      // A daemon answers only once each webhook has looked at the store: the events from then on are its.
      let n = 0;
      for (let round = 0; round < 10; round++)
        for (const d of replicas) {
          n++;
          expect(await d.body(`/start?name=r${n}`)).toBe("1\n");
          expect(await d.body("/stop")).toBe("1\n");
        }
      await until(async () => r.got.length >= 2 * n, `${2 * n} deliveries`, 30_000);
      const ids = r.got.map((g) => g.id);
      expect(new Set(ids).size).toBe(2 * n);
      expect(ids.length).toBe(2 * n);
      expect(r.got.map((g) => g.releaseId)).toEqual(Array.from({ length: n }, (_, i) => [i + 1, i + 1]).flat());
      console.log(`replicas: ${2 * n} events, ${ids.length} deliveries, ${ids.length - new Set(ids).size} twice`);
    },
  );

  test.skipIf(!process.env.RS_TEST_DB)(
    "an event that commits after a later-numbered one is still delivered: event writes are ordered",
    async () => {
      const r = receiver();
      const db = await freshDb();
      const d = await startDaemon({ RS_DB: db, RS_CONFIG: webhookConfig(r.url) });
      const admin = new Bun.SQL(db);
      try {
        // The start of "slow" commits a second after its event took its sequence number.
        expect(await d.body("/locks/q/start?name=holder")).toBe("1\n");
        const leaving = new AbortController();
        d.get("/locks/q/start?name=patient&wait=60", { signal: leaving.signal }).catch(() => {});
        await until(
          async () => (await (await d.get("/locks/q/status?format=json")).json()).queue.length === 1,
          "the waiter",
        );
        const { slow } = await startHeldBack(admin, d);
        leaving.abort(); // its left-queue event is written while the start of slow has not committed
        expect(await slow).toBe("1\n");
        await until(async () => r.got.some((g) => g.type === "queue.left"), "the left-queue event");
        await expectEveryEventOf(d, r, "slow");
      } finally {
        await admin.close();
      }
    },
    30_000,
  );

  test.skipIf(!process.env.RS_TEST_DB)(
    "a freeze boundary that commits after a later-numbered change is still delivered: the calendar's events are ordered too",
    async () => {
      const r = receiver();
      const db = await freshDb();
      // A window in force on another lock: removing it by a reload records a thaw.
      const minute = (t: number) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
      const window = `[[freeze]]\nreason = "test"\nlocks = ["f"]\nfrom = "${minute(Date.now() - 3_600_000)}"\nuntil = "${minute(Date.now() + 3_600_000)}"\n`;
      const config = webhookConfig(r.url, window);
      const d = await startDaemon({ RS_DB: db, RS_CONFIG: config });
      const admin = new Bun.SQL(db);
      try {
        const { slow } = await startHeldBack(admin, d);
        // The window removed by a reload while the start of slow has not committed: the thaw is written meanwhile.
        writeFileSync(config, `[[webhook]]\nurl = "${r.url}"\n`);
        d.proc.kill("SIGHUP");
        expect(await slow).toBe("1\n");
        await until(async () => r.got.some((g) => g.type === "lock.thawed"), "the thawed event");
        await expectEveryEventOf(d, r, "slow");
      } finally {
        await admin.close();
      }
    },
    30_000,
  );
});
