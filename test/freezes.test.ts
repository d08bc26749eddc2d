// The freeze calendar, against the binary: a window refuses starts with
// `frozen`, an override goes through and is recorded, boundaries are recorded
// once across restarts (and, on PostgreSQL, across replicas), and a reload
// takes effect at once. The schedule itself is specified in calendar.test.ts,
// the engine's part (waiters, missed boundaries) in engine.test.ts.
import { afterEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { configFile, type Daemon, daemonsPerTest, freshDb, runBinary, until } from "./daemon.ts";

const startDaemon = daemonsPerTest();
const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });
const HOUR = 3_600_000;

// A one-off window in UTC around the real time, as the file writes it: "2026-11-28 09:00".
const minute = (t: number) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
const inForce = (reason: string, locks: string[] | null) =>
  `[[freeze]]\nreason = "${reason}"\n${locks ? `locks = ${JSON.stringify(locks)}\n` : ""}from = "${minute(Date.now() - HOUR)}"\nuntil = "${minute(Date.now() + 2 * HOUR)}"\n`;

const boundaries = async (d: Daemon) =>
  ((await (await d.get("/history?format=json")).json()).events as { kind: string; lock: string }[])
    .filter((e) => e.kind === "frozen" || e.kind === "thawed")
    .map((e) => `${e.kind} ${e.lock}`);

describe("a freeze refuses starts on the locks it covers", () => {
  test("0 with reason frozen and HTTP 200, saying until when and why; other locks are open", async () => {
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: configFile(inForce("test freeze", ["prod"])) });
    for (const path of ["/locks/prod/start", "/locks/prod/eu/start"]) {
      const res = await d.get(path);
      expect({ path, status: res.status, body: await res.text() }).toEqual({ path, status: 200, body: "0\n" });
      expect(res.headers.get("x-reason-code")).toBe("frozen");
      expect(res.headers.get("x-reason")).toMatch(/^releasing on prod(\/eu)? is frozen until .* UTC \(test freeze\)$/);
    }
    expect(await d.body("/locks/staging/start")).toBe("1\n");
    expect(await d.body("/start")).toBe("1\n");
    const status = await (await d.get("/locks/prod/status?format=json")).json();
    expect(status.freeze).toMatchObject({ reason: "test freeze", timezone: "UTC" });
    expect(await d.body("/locks/prod/status")).toContain("frozen: releasing on prod is frozen until");
    const metrics = await d.body("/metrics");
    expect(metrics).toContain('releasestatus_frozen{lock="prod"} 1');
    expect(metrics).toContain('releasestatus_frozen{lock="staging"} 0');
  });

  test("a waiter keeps waiting through the freeze, within its wait=", async () => {
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: configFile(inForce("test freeze", ["prod"])) });
    const res = await d.get("/locks/prod/start?name=patient&wait=1");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("timeout");
    expect(res.headers.get("x-reason")).toContain("is frozen until");
    // It was in line until its wait= ran out (the history, unlike a look at the line, does not race the wait).
    const { events } = await (await d.get("/locks/prod/history?format=json")).json();
    expect(events.map((e: { kind: string; reason: string }) => `${e.kind} ${e.reason}`)).toEqual([
      "left-queue timed out",
      "waiting ",
      "frozen test freeze",
    ]);
  });

  test("/freezes lists each window with its next occurrences, in UTC and on its own clock", async () => {
    const file = configFile(
      `${inForce("test freeze", ["prod"])}\n[[freeze]]\nreason = "weekend"\nevery = "Fri 16:00 - Mon 08:00"\ntimezone = "Europe/Budapest"\n`,
    );
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file });
    const { freezes } = await (await d.get("/freezes?format=json")).json();
    expect(freezes.map((f: { reason: string; inForce: boolean }) => [f.reason, f.inForce])).toEqual([
      ["test freeze", true],
      ["weekend", expect.any(Boolean)],
    ]);
    expect(freezes[1].next).toHaveLength(3);
    expect(freezes[1].next[0].fromLocal).toMatch(/^Fri \d{4}-\d\d-\d\d 16:00 CET$/);
    expect(await d.body("/freezes")).toContain("weekend (every lock): every Fri 16:00 - Mon 08:00 (Europe/Budapest)");
  });
});

describe("an override starts during a freeze, and is recorded with why and who", () => {
  test("without tokens anyone may override; an empty override is invalid", async () => {
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: configFile(inForce("test freeze", ["prod"])) });
    expect((await d.get("/locks/prod/start?override=")).status).toBe(400);
    expect(await d.body("/locks/prod/start?name=ops&override=hotfix")).toBe("1\n");
    const events = (await (await d.get("/locks/prod/history?format=json")).json()).events as Record<string, string>[];
    const [started, overridden] = events.filter((e) => e.kind === "started" || e.kind === "overridden");
    expect(started).toMatchObject({ kind: "started", name: "ops" });
    expect(overridden).toMatchObject({ kind: "overridden", name: "ops", releaseId: started?.releaseId });
    expect(overridden?.reason).toStartWith("hotfix (over: releasing on prod is frozen until");
  });

  test("with tokens, only a token with the override right may; it is recorded as by", async () => {
    const OPS = "ops-token-0123456789";
    const ANA = "ana-token-0123456789";
    const tokens = [
      `[[token]]\nwho = "ana"\ncan = ["release"]\nlocks = ["prod"]\nsha256 = "${sha(ANA)}"\n`,
      `[[token]]\nwho = "ops"\ncan = ["release", "override"]\nlocks = ["prod"]\nsha256 = "${sha(OPS)}"\n`,
    ].join("\n");
    const d = await startDaemon({
      RS_DB: await freshDb(),
      RS_CONFIG: configFile(`${inForce("test freeze", ["prod"])}\n${tokens}`),
    });
    const refused = await d.get("/locks/prod/start?override=hotfix", as(ANA));
    expect(refused.status).toBe(403);
    expect(refused.headers.get("x-reason")).toStartWith("ana may not override the freeze on prod");
    expect(await d.body("/locks/prod/start", as(ANA))).toBe("0\n"); // frozen
    expect(await d.body("/locks/prod/start?override=hotfix", as(OPS))).toBe("1\n");
    const events = (await (await d.get("/history?format=json")).json()).events as Record<string, string>[];
    const overridden = events.find((e) => e.kind === "overridden");
    expect(overridden).toMatchObject({ kind: "overridden", name: "ops", by: "ops" });
  });
});

describe("a window's boundaries are recorded once each", () => {
  test("one frozen event per lock the window names, and no second one after a restart", async () => {
    const db = await freshDb();
    const file = configFile(inForce("test freeze", ["prod", "staging"]));
    const d = await startDaemon({ RS_DB: db, RS_CONFIG: file });
    await until(async () => (await boundaries(d)).length === 2, "two frozen events");
    expect((await boundaries(d)).sort()).toEqual(["frozen prod", "frozen staging"]);
    expect(await d.stop()).toBe(0);
    const again = await startDaemon({ RS_DB: db, RS_CONFIG: file });
    expect(await again.body("/locks/prod/start")).toBe("0\n"); // the calendar is in force
    expect((await boundaries(again)).sort()).toEqual(["frozen prod", "frozen staging"]);
  });

  test("a reload that adds a window takes effect at once, and records its start", async () => {
    const file = configFile("");
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file });
    expect(await d.body("/locks/prod/start?name=before")).toBe("1\n");
    expect(await d.body("/locks/prod/stop")).toBe("1\n");
    writeFileSync(file, inForce("added", ["prod"]));
    d.proc.kill("SIGHUP");
    await until(async () => d.output().includes("configuration reloaded"), "the reload");
    expect(d.output()).toContain("freeze windows: 0 → 1 (added)");
    expect(await d.body("/locks/prod/start")).toBe("0\n");
    await until(async () => (await boundaries(d)).includes("frozen prod"), "the frozen event");
  });

  test.skipIf(!process.env.RS_TEST_DB)("three PostgreSQL replicas record each boundary once", async () => {
    const db = await freshDb();
    const file = configFile(inForce("test freeze", ["prod", "staging"]));
    const replicas = await Promise.all([1, 2, 3].map(() => startDaemon({ RS_DB: db, RS_CONFIG: file })));
    // Each replica has looked at the calendar and found the boundary recorded, by itself or another.
    for (const r of replicas)
      await until(async () => (await (await r.get("/freezes?format=json")).json()).freezes[0].recorded, "recorded");
    for (const r of replicas) expect((await boundaries(r)).sort()).toEqual(["frozen prod", "frozen staging"]);
    for (const r of replicas) expect(await r.body("/locks/prod/start")).toBe("0\n");
  });
});

describe("across SIGHUP reloads, the history and the webhooks tell what /status says, in time order", () => {
  const servers: { stop(force: boolean): void }[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.stop(true);
  });
  // A webhook receiver on loopback: what it was sent, as "type lock status". New to the database, it is sent
  // the events after its first look, which comes after the calendar's: not the frozen recorded at start-up.
  const receiver = () => {
    const got: string[] = [];
    const server = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(req) {
        const { type, data } = await req.json();
        got.push(`${type} ${data.lock} ${data.status}`);
        return new Response("ok");
      },
    });
    servers.push(server);
    return {
      got,
      hook: `[[webhook]]\nurl = "http://127.0.0.1:${server.port}/hook"\nevents = ["frozen", "thawed", "blocked"]\n`,
    };
  };
  const notInForce = (reason: string) =>
    `[[freeze]]\nreason = "${reason}"\nlocks = ["prod"]\nfrom = "${minute(Date.now() + 5 * HOUR)}"\nuntil = "${minute(Date.now() + 6 * HOUR)}"\n`;
  const freezeEvents = async (d: Daemon) =>
    ((await (await d.get("/locks/prod/history?format=json")).json()).events as { kind: string; at: string }[])
      .filter((e) => e.kind === "frozen" || e.kind === "thawed")
      .reverse();
  const reload = async (d: Daemon, file: string, text: string, n: number) => {
    writeFileSync(file, text);
    d.proc.kill("SIGHUP");
    await until(async () => d.output().split("configuration reloaded").length > n, `reload ${n}`);
  };
  const frozenNow = async (d: Daemon) => (await (await d.get("/locks/prod/status?format=json")).json()).freeze !== null;
  // Blocks the lock and waits for that to arrive: whatever was sent before it has arrived too, in order.
  const allSent = async (d: Daemon, r: { got: string[] }) => {
    expect(await d.body("/locks/prod/block?name=ana")).toBe("1\n");
    await until(async () => r.got.includes("lock.blocked prod blocked"), "the blocked delivery");
    return r.got.slice(0, -1);
  };
  const expectInTimeOrder = (events: { at: string }[]) =>
    expect(events.map((e) => e.at)).toEqual(events.map((e) => e.at).sort());

  test("a window moved out of force and back: thawed, then frozen again, each recorded and sent", async () => {
    const r = receiver();
    const file = configFile(`${r.hook}${inForce("test freeze", ["prod"])}`);
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file });
    const before = await Bun.file(file).text();
    await reload(d, file, `${r.hook}${notInForce("test freeze")}`, 1);
    expect(await frozenNow(d)).toBe(false);
    await reload(d, file, before, 2);
    expect(await frozenNow(d)).toBe(true);
    await until(async () => (await freezeEvents(d)).length === 3, "three freeze events");
    const events = await freezeEvents(d);
    expect(events.map((e) => e.kind)).toEqual(["frozen", "thawed", "frozen"]);
    expectInTimeOrder(events);
    expect(await allSent(d, r)).toEqual(["lock.thawed prod open", "lock.frozen prod frozen"]);
  });

  test("a second window added while the lock is frozen records and sends nothing", async () => {
    const r = receiver();
    const file = configFile(`${r.hook}${inForce("first", ["prod"])}`);
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file });
    await reload(d, file, `${r.hook}${inForce("first", ["prod"])}${inForce("second", ["prod"])}`, 1);
    expect(d.output()).toContain("freeze windows: 1 → 2");
    expect(await d.body("/locks/prod/start")).toBe("0\n"); // the reload is done: its look came first
    const events = await freezeEvents(d);
    expect(events.map((e) => e.kind)).toEqual(["frozen"]);
    expect(await allSent(d, r)).toEqual([]);
  });

  test("removing one of two overlapping windows records and sends nothing while the other freezes the lock", async () => {
    const r = receiver();
    const file = configFile(`${r.hook}${inForce("first", ["prod"])}${inForce("second", ["prod"])}`);
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file });
    await reload(d, file, `${r.hook}${inForce("second", ["prod"])}`, 1);
    expect(await frozenNow(d)).toBe(true);
    expect((await freezeEvents(d)).map((e) => e.kind)).toEqual(["frozen"]);
    // Then removing the other too thaws it: recorded after the first, and sent.
    await reload(d, file, r.hook, 2);
    expect(await allSent(d, r)).toEqual(["lock.thawed prod open"]);
    const events = await freezeEvents(d);
    expect(events.map((e) => e.kind)).toEqual(["frozen", "thawed"]);
    expectInTimeOrder(events);
  });

  test("a window removed from the file while the daemon was down: the restart records the thaw", async () => {
    const db = await freshDb();
    const file = configFile(inForce("test freeze", ["prod"]));
    const first = await startDaemon({ RS_DB: db, RS_CONFIG: file });
    await until(async () => (await freezeEvents(first)).length === 1, "the frozen recorded");
    expect(await first.stop()).toBe(0);
    writeFileSync(file, "");
    const d = await startDaemon({ RS_DB: db, RS_CONFIG: file });
    expect(await frozenNow(d)).toBe(false);
    await until(async () => (await freezeEvents(d)).length === 2, "the thaw recorded");
    const events = await freezeEvents(d);
    expect(events.map((e) => e.kind)).toEqual(["frozen", "thawed"]);
    expectInTimeOrder(events);
  });
});

// 2,000 cron windows like the README's "monthly close", each at its own minute and in one of three zones,
// on a lock nobody starts: the calendar is computed for each of them, but no start is frozen by them.
const manyCronWindows = (count: number) =>
  Array.from({ length: count }, (_, i) => {
    const zone = ["UTC", "Europe/Budapest", "America/New_York"][i % 3];
    const [minute, hour] = [i % 60, 12 + (Math.floor(i / 60) % 12)];
    return `[[freeze]]\nreason = "close ${i}"\nlocks = ["ledger"]\nstart = "${minute} ${hour} L * *"\nend = "${minute} ${hour - 3} 2 * *"\ntimezone = "${zone}"\n`;
  }).join("\n");

describe("the calendar costs milliseconds, not the event loop, with thousands of cron windows", () => {
  test("with 2,000 cron windows the daemon answers at start-up, and /freezes while a /start is answered", async () => {
    // Searched minute by minute this took minutes to start and tens of seconds per /freezes: far past the timeout.
    const d = await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: configFile(manyCronWindows(2000)) });
    const reads = [1, 2, 3, 4].map(() => d.get("/freezes?format=json").then((r) => r.json()));
    const start = d.body("/start?name=ana");
    expect(await start).toBe("1\n");
    for (const { freezes } of await Promise.all(reads)) {
      expect(freezes).toHaveLength(2000);
      expect(freezes.every((f: { next: unknown[] }) => f.next.length === 3)).toBe(true);
    }
    expect(await d.body("/locks/ledger/status")).toMatch(/^(frozen|next freeze): /m);
  });
});

describe("a one-off window inside a daylight-saving gap stops start-up, naming the gap", () => {
  test("exit code 2, the file's line, and the times the clocks jump between", async () => {
    const file = configFile(
      '[[freeze]]\nreason = "migration"\nfrom = "2027-03-28 02:30"\nuntil = "2027-03-28 02:50"\ntimezone = "Europe/Budapest"\n',
    );
    const started = await runBinary([], { RS_CONFIG: file, RS_PORT: "1" });
    expect(started.code).toBe(2);
    expect(started.stderr).toContain(
      `${file}:3: from = "2027-03-28 02:30" does not exist in Europe/Budapest: clocks jump from 02:00 to 03:00, so the window would be empty; choose a time outside the gap`,
    );
  });
});
