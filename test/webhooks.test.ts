// Webhooks: what is sent in each format (checked against the Standard Webhooks
// spec by a verifier written here, not shared with the code), which events a
// webhook wants, the retry schedule, and delivery itself, on the engine with an
// injected clock and real receivers (Bun.serve): in order, at least once,
// through a receiver that is down, answers 410, asks to retry later or hangs,
// with a bounded backlog and long-running reminders. The daemon's side (crashes,
// replicas, /webhooks) is in webhooks-daemon.test.ts.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Server } from "bun";
import pkg from "../package.json" with { type: "json" };
import { parseWindow, type Window } from "../src/calendar.ts";
import { createEngine, type Engine } from "../src/engine.ts";
import { calendarSettled, frozenAt, keepCalendar, stopCalendar } from "../src/freezes.ts";
import {
  deliver,
  nextDelay,
  RETRY_SCHEDULE_MS,
  retryAfter,
  stopDelivery,
  webhookStatuses,
} from "../src/notify/deliver.ts";
import { messageId, render, wants } from "../src/notify/formats.ts";
import { hearsLock, labelled, parseWebhook, type Webhook } from "../src/notify/webhook.ts";
import { block, type Event, ROOT, stop, unblock } from "../src/release.ts";
import { openMemoryStore } from "../src/store/memory.ts";
import type { Store } from "../src/store/store.ts";
import { T0, testClock } from "./clock.ts";
import { until } from "./daemon.ts";

const SECRET_BYTES = new Uint8Array(32).map((_, i) => i + 1);
const SECRET = `whsec_${Buffer.from(SECRET_BYTES).toString("base64")}`;

const hook = (raw: Record<string, unknown>): Webhook => {
  const parsed = parseWebhook(raw);
  if (typeof parsed === "string") throw new Error(parsed);
  return labelled([parsed])[0] as Webhook;
};
const event = (over: Partial<Event> = {}): Event => ({
  lock: "prod",
  at: T0,
  kind: "started",
  releaseId: 42,
  name: "sion",
  reason: "v2.3.1",
  by: "ana",
  ...over,
});

/** The Standard Webhooks check, from the spec: HMAC-SHA256 over "id.timestamp.body", key = base64 after "whsec_". */
function verify(secret: string, headers: Headers, body: string): boolean {
  const id = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp");
  const signatures = headers.get("webhook-signature");
  if (!id || !timestamp || !signatures) return false;
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest();
  return signatures.split(" ").some((s) => {
    const [version, sig] = s.split(",");
    const given = Buffer.from(sig ?? "", "base64");
    return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
  });
}

describe("the standard format follows Standard Webhooks", () => {
  test("signed so that a verifier written from the spec accepts it, and only it", () => {
    const h = hook({ url: "https://example.com/hooks", secret: SECRET });
    const m = render(h, "msg_7_1", event(), T0 + 1500);
    const headers = new Headers(m.headers);
    expect(headers.get("webhook-id")).toBe("msg_7_1");
    expect(headers.get("webhook-timestamp")).toBe(String(Math.floor((T0 + 1500) / 1000)));
    expect(verify(SECRET, headers, m.body)).toBe(true);
    expect(verify(SECRET, headers, m.body.replace("sion", "mallory"))).toBe(false);
    const other = `whsec_${Buffer.from(new Uint8Array(32)).toString("base64")}`;
    expect(verify(other, headers, m.body)).toBe(false);
  });

  test("the body has type, timestamp and data with lock, releaseId, name, by, reason, at and status", () => {
    const m = render(hook({ url: "https://example.com/hooks" }), "msg_1_1", event(), T0);
    expect(JSON.parse(m.body)).toEqual({
      type: "release.started",
      timestamp: "2026-11-27T09:00:00Z",
      data: {
        lock: "prod",
        releaseId: 42,
        name: "sion",
        by: "ana",
        reason: "v2.3.1",
        at: "2026-11-27T09:00:00Z",
        status: "running",
        message: "release #42 on prod by sion, started by ana: v2.3.1",
      },
    });
    const types = (["blocked", "unblocked", "waiting", "left-queue", "expired", "frozen", "thawed"] as const).map(
      (kind) => JSON.parse(render(hook({ url: "https://e.com" }), "m", event({ kind }), T0).body).type,
    );
    expect(types).toEqual([
      "lock.blocked",
      "lock.unblocked",
      "queue.waiting",
      "queue.left",
      "release.expired",
      "lock.frozen",
      "lock.thawed",
    ]);
  });

  test("the id is the same on every retry of an event, and differs between events", () => {
    expect(messageId(7, event())).toBe(messageId(7, event()));
    expect(messageId(7, event())).not.toBe(messageId(8, event()));
  });
});

describe("Slack and Teams get the shapes their services accept", () => {
  test("Slack: text (escaped, not read as formatting) and blocks with a plain-text section and context", () => {
    const body = JSON.parse(
      render(hook({ url: "https://hooks.slack.com/services/T/B/X", format: "slack" }), "m", event({ name: "<b>&" }), T0)
        .body,
    );
    expect(body.text).toBe("release #42 on prod by &lt;b&gt;&amp;, started by ana: v2.3.1");
    expect(body.blocks.map((b: { type: string }) => b.type)).toEqual(["section", "context"]);
    expect(body.mrkdwn).toBe(false);
    expect(body.blocks[0].text).toEqual({ type: "plain_text", text: body.text, emoji: false });
    expect(body.blocks[1].elements[0].type).toBe("plain_text");
  });

  test("Teams: one Adaptive Card (1.4) of RichTextBlocks, whose TextRuns are never read as markdown", () => {
    const link = "[click](https://evil.example)";
    const body = JSON.parse(
      render(
        hook({ url: "https://example.logic.azure.com/workflows/x", format: "teams" }),
        "m",
        event({ name: link }),
        T0,
      ).body,
    );
    expect(body.type).toBe("message");
    expect(body.attachments).toHaveLength(1);
    const [a] = body.attachments;
    expect(a.contentType).toBe("application/vnd.microsoft.card.adaptive");
    expect(a.content).toMatchObject({ type: "AdaptiveCard", version: "1.4" });
    const blocks = a.content.body as { type: string; inlines: { type: string; text: string }[] }[];
    expect(new Set(blocks.map((b) => b.type))).toEqual(new Set(["RichTextBlock"]));
    expect(new Set(blocks.flatMap((b) => b.inlines.map((i) => i.type)))).toEqual(new Set(["TextRun"]));
    expect(blocks.map((b) => b.inlines.map((i) => i.text).join(""))).toContain("Lock: prod");
    expect(blocks.map((b) => b.inlines.map((i) => i.text).join(""))).toContain(`Name: ${link}`);
  });
});

describe("a webhook is sent the events it asks for", () => {
  const hears = (h: Webhook) => (lock: string) => hearsLock(h, lock);
  test("by default all but renewed and waiting, on every lock", () => {
    const h = hook({ url: "https://e.com" });
    expect(wants(h, event({ kind: "renewed" }), hears(h))).toBe(false);
    expect(wants(h, event({ kind: "waiting" }), hears(h))).toBe(false);
    expect(wants(h, event({ kind: "left-queue" }), hears(h))).toBe(true);
    expect(wants(h, event({ lock: "", kind: "blocked" }), hears(h))).toBe(true);
  });

  test("a waiter superseded on a newest-first lock is sent by default, typed queue.superseded, with its words", () => {
    const h = hook({ url: "https://e.com" });
    const passed = event({
      kind: "superseded",
      releaseId: null,
      name: "ana",
      version: "v2.4.0",
      reason: "superseded by v2.4.1 from ben, who now waits in your place",
    });
    expect(wants(h, passed, hears(h))).toBe(true);
    const sent = JSON.parse(render(h, "m", passed, T0).body);
    expect(sent.type).toBe("queue.superseded");
    expect(sent.data.message).toContain("superseded by v2.4.1 from ben, who now waits in your place");
  });

  test("locks: a lock and what is under it (the root only for every lock); events: only those listed", () => {
    const h = hook({ url: "https://e.com", locks: ["prod"], events: ["started", "blocked"] });
    expect(wants(h, event({ lock: "prod/eu" }), hears(h))).toBe(true);
    expect(wants(h, event({ lock: "", kind: "blocked" }), hears(h))).toBe(false);
    expect(wants(h, event({ lock: "production" }), hears(h))).toBe(false);
    expect(wants(h, event({ lock: "staging" }), hears(h))).toBe(false);
    expect(wants(h, event({ kind: "stopped" }), hears(h))).toBe(false);
  });

  test("long-running reminders only at the webhook's own pace", () => {
    const h = hook({ url: "https://e.com", remind_after: "120m" });
    const reminder = (every: string) => event({ kind: "long-running", reason: `running for 2 h (every ${every})` });
    expect(wants(h, reminder("2 h"), hears(h))).toBe(true); // 120m is 2 h
    expect(wants(h, reminder("30 min"), hears(h))).toBe(false);
  });
});

describe("a release of several locks in webhooks", () => {
  const several = event({ lock: "prod/eu", locks: ["prod/eu", "shared-db"], releaseId: 46 });
  test("a webhook on any of its locks hears of it", () => {
    const h = hook({ url: "https://e.com", locks: ["shared-db"] });
    expect(wants(h, several, (lock) => hearsLock(h, lock))).toBe(true);
  });

  test("every format names all of its locks", () => {
    const standard = JSON.parse(render(hook({ url: "https://e.com" }), "m", several, T0).body);
    expect(standard.data).toMatchObject({ lock: "prod/eu", locks: ["prod/eu", "shared-db"] });
    expect(standard.data.message).toMatch(/release #46 on prod\/eu, shared-db/);
    const slack = render(hook({ url: "https://hooks.slack.com/services/T/B/X", format: "slack" }), "m", several, T0);
    expect(slack.body).toContain("locks prod/eu, shared-db");
    const teams = render(hook({ url: "https://x.webhook.office.com/a", format: "teams" }), "m", several, T0);
    expect(teams.body).toContain('"text":"Locks: ","weight":"Bolder"},{"type":"TextRun","text":"prod/eu, shared-db"}');
  });
});

describe("a [[webhook]] table is checked whole", () => {
  const BAD: [Record<string, unknown>, RegExp][] = [
    [{}, /^url is missing/],
    [{ url: "ftp://example.com" }, /^url is not valid/],
    [{ url: "https://example.com/\u202ekoob" }, /^url is not valid/],
    [{ url: "https://e.com", format: "discord" }, /^format = "discord" is not valid/],
    [{ url: "https://e.com", events: ["started", "exploded"] }, /^events is not valid/],
    [{ url: "https://e.com", locks: ["Prod!"] }, /^locks is not valid/],
    [{ url: "https://e.com", remind_after: "soon" }, /^remind_after = "soon" is not valid/],
    [{ url: "https://e.com", remind_after: "2h", events: ["started"] }, /^remind_after needs "long-running"/],
    [{ url: "https://e.com", secret: "hunter2" }, /^secret is not valid/],
    [{ url: "https://e.com", format: "slack", secret: SECRET }, /^secret is for the standard format only/],
    [{ url: "https://e.com", colour: "red" }, /^colour is not a webhook setting/],
    [{ url: "https://e.com", url_file: "/x" }, /^url and url_file are both given/],
    [{ url_file: "/nonexistent/hook" }, /^url_file: cannot read \/nonexistent\/hook \(ENOENT\)/],
  ];
  for (const [raw, problem] of BAD)
    test(`${JSON.stringify(raw)} is refused`, () => {
      expect(parseWebhook(raw)).toMatch(problem);
    });

  test("a URL's path is never in a problem, a label or a log: it may be the secret", () => {
    const [a, b] = labelled([
      parseWebhook({ url: "https://hooks.slack.com/services/T0/B0/SECRET1" }) as Webhook,
      parseWebhook({ url: "https://hooks.slack.com/services/T0/B0/SECRET2" }) as Webhook,
    ]);
    expect([a?.label, b?.label]).toEqual(["hooks.slack.com", "hooks.slack.com#2"]);
  });
});

describe("the retry schedule", () => {
  test("Standard Webhooks' schedule with ±10% jitter, then dropped after the tenth attempt", () => {
    expect(RETRY_SCHEDULE_MS.map((ms) => ms / 1000)).toEqual([5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]);
    expect(nextDelay(1, null, () => 0.5)).toBe(5_000);
    expect(nextDelay(1, null, () => 0)).toBe(4_500);
    expect(nextDelay(1, null, () => 1)).toBe(5_500);
    expect(nextDelay(9, null, () => 0.5)).toBe(86_400_000);
    expect(nextDelay(10, null, () => 0.5)).toBeNull();
  });

  test("Retry-After in seconds or as a date is honoured, at most a day", () => {
    expect(retryAfter("120", T0)).toBe(120_000);
    expect(retryAfter(new Date(T0 + 90_000).toUTCString(), T0)).toBe(90_000);
    expect(retryAfter("soon", T0)).toBeNull();
    expect(nextDelay(1, 120_000, () => 0.5)).toBe(120_000);
    expect(nextDelay(1, 0, () => 0.5)).toBe(5_000); // never sooner than the schedule
    expect(nextDelay(1, 9 * 86_400_000, () => 0.5)).toBe(86_400_000);
  });
});

/** A receiver that records what it was sent and answers as the test says. */
function receiver() {
  const got: { id: string | null; body: string; headers: Headers }[] = [];
  let answer: () => Response | Promise<Response> = () => new Response("ok");
  const server: Server<undefined> = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(req) {
      const body = await req.text();
      got.push({ id: req.headers.get("webhook-id"), body, headers: req.headers });
      return answer();
    },
  });
  return {
    url: `http://127.0.0.1:${server.port}/hook`,
    got,
    answerWith(f: () => Response | Promise<Response>) {
      answer = f;
    },
    stop: () => server.stop(true),
  };
}

const types = (got: { body: string }[]) => got.map((g) => JSON.parse(g.body).data?.name ?? JSON.parse(g.body).type);

describe("delivery: in order, at least once, never in the way", () => {
  let clock: ReturnType<typeof testClock>;
  let store: Store;
  let engine: Engine;
  const logged: string[] = [];
  const log = {
    info: (m: string) => logged.push(m),
    warn: (m: string) => logged.push(m),
    error: (m: string) => logged.push(m),
    refusal: () => {},
  } as unknown as Parameters<typeof deliver>[1]["log"];
  const starts = async (...names: string[]) => {
    for (const name of names) {
      const o = await engine.start(
        `team/${name}`,
        { name, reason: "", ttlSeconds: null },
        0,
        new AbortController().signal,
      );
      expect(o.ok).toBe(true);
    }
  };
  // A new webhook starts from the newest event when it first looks: the test waits for that look.
  const run = async (hooks: Webhook[], backlog = 10_000, attemptTimeoutMs = 5_000) => {
    deliver(hooks, { engine, outbox: store.outbox, clock, log, backlog, random: () => 0.5, attemptTimeoutMs });
    await until(async () => webhookStatuses().every((w) => w.looked), "the webhooks' first look");
  };

  beforeEach(async () => {
    clock = testClock();
    store = openMemoryStore(10_000, clock.now);
    logged.length = 0;
    engine = createEngine({ store, clock, frozen: frozenAt });
    await engine.open();
  });
  afterEach(async () => {
    stopDelivery();
    await engine.close();
  });

  describe("a webhook's status is what the lock is after the event, not a word fixed per kind", () => {
    const statuses = (got: { body: string }[]) =>
      got.map((g) => JSON.parse(g.body)).map((b) => `${b.type} ${b.data.lock} ${b.data.status}`);
    const blockAs = (lock: string, name: string) =>
      engine.change(lock, (s, now) => block(s, { name, reason: "" }, now));
    const unblockAs = (lock: string, name: string) => engine.change(lock, (s, now) => unblock(s, { name }, now));
    afterEach(() => stopCalendar());

    test("unblocking a lock still blocked from above says blocked; open once nothing blocks it", async () => {
      const r = receiver();
      await run([hook({ url: r.url, events: ["unblocked"] })]);
      await blockAs(ROOT, "ana");
      await blockAs("prod", "bob");
      await unblockAs("prod", "bob");
      await unblockAs(ROOT, "ana");
      await until(async () => r.got.length === 2, "two deliveries");
      expect(statuses(r.got)).toEqual(["lock.unblocked prod blocked", "lock.unblocked  open"]);
      r.stop();
    });

    test("a thaw on a lock another window still freezes says frozen; unblocking a frozen lock says frozen", async () => {
      const r = receiver();
      await run([hook({ url: r.url, events: ["thawed", "unblocked"] })]);
      const everyLock = parseWindow({ reason: "holidays", from: "2026-11-27 08:00", until: "2026-11-27 12:00" });
      const onProd = parseWindow({
        reason: "prod",
        locks: ["prod"],
        from: "2026-11-27 08:00",
        until: "2026-11-27 09:10",
      });
      keepCalendar(engine, [everyLock, onProd] as Window[], clock);
      await calendarSettled();
      await blockAs("staging", "bob");
      await unblockAs("staging", "bob");
      await clock.advance(10 * 60_000 + 1);
      await calendarSettled();
      await until(async () => r.got.length === 2, "two deliveries");
      expect(statuses(r.got)).toEqual(["lock.unblocked staging frozen", "lock.thawed prod frozen"]);
      r.stop();
    });
  });

  test("every event arrives once, in order", async () => {
    const r = receiver();
    await run([hook({ url: r.url })]);
    await starts("a", "b", "c");
    await until(async () => r.got.length === 3, "three deliveries");
    // The receiver has them a moment before the daemon has heard its answer to the last and counted it.
    await until(async () => webhookStatuses()[0]?.deliveries.delivered === 3, "the third answer heard");
    expect(types(r.got)).toEqual(["a", "b", "c"]);
    expect(new Set(r.got.map((g) => g.id)).size).toBe(3);
    expect(webhookStatuses()[0]?.deliveries).toEqual({ delivered: 3, failed: 0, dropped: 0 });
    r.stop();
  });

  test("Slack and Teams receivers get one message per event, in order", async () => {
    const slack = receiver();
    const teams = receiver();
    await run([hook({ url: slack.url, format: "slack" }), hook({ url: teams.url, format: "teams" })]);
    await starts("a", "b");
    await until(async () => slack.got.length === 2 && teams.got.length === 2, "two messages each");
    expect(slack.got.map((g) => JSON.parse(g.body).text)).toEqual([
      "release #1 on team/a started by a",
      "release #2 on team/b started by b",
    ]);
    expect(teams.got.map((g) => JSON.parse(g.body).attachments[0].content.body[0].inlines[0].text)).toEqual([
      "release #1 on team/a started by a",
      "release #2 on team/b started by b",
    ]);
    slack.stop();
    teams.stop();
  });

  describe("a message says what the event alone does not: how long a release ran, until when a freeze lasts", () => {
    afterEach(() => stopCalendar());

    test("stopped says how long the release ran, in every format", async () => {
      const slack = receiver();
      const plain = receiver();
      await run([
        hook({ url: slack.url, format: "slack", events: ["stopped"] }),
        hook({ url: plain.url, events: ["stopped"] }),
      ]);
      await starts("a");
      await clock.advance(12 * 60_000 + 5_000);
      await engine.change("team/a", (s, now) => stop(s, null, { name: "a" }, now));
      await until(async () => slack.got.length === 1 && plain.got.length === 1, "the stop");
      expect(JSON.parse(slack.got[0]?.body ?? "").text).toBe("release #1 on team/a stopped by a after 12m 5s");
      expect(JSON.parse(plain.got[0]?.body ?? "").data.message).toBe("release #1 on team/a stopped by a after 12m 5s");
      slack.stop();
      plain.stop();
    });

    test("frozen says until when, in the window's own time zone", async () => {
      const slack = receiver();
      await run([hook({ url: slack.url, format: "slack", events: ["frozen"] })]);
      const window = parseWindow({
        reason: "holidays",
        locks: ["prod"],
        timezone: "Europe/Paris",
        from: "2026-11-27 11:00",
        until: "2026-11-27 13:30",
      });
      keepCalendar(engine, [window] as Window[], clock);
      await calendarSettled();
      await clock.advance(60 * 60_000 + 1);
      await calendarSettled();
      await until(async () => slack.got.length === 1, "the freeze");
      expect(JSON.parse(slack.got[0]?.body ?? "").text).toBe(
        "releasing on prod frozen by the calendar: holidays, until Fri 2026-11-27 13:30 CET",
      );
      slack.stop();
    });

    test("a stop on a frozen lock says frozen in the standard payload, not idle", async () => {
      const r = receiver();
      await run([hook({ url: r.url, events: ["stopped"] })]);
      keepCalendar(
        engine,
        [
          parseWindow({ reason: "x", locks: ["team"], from: "2026-11-27 08:00", until: "2026-11-27 12:00" }),
        ] as Window[],
        clock,
      );
      await calendarSettled();
      await engine.start(
        "team/a",
        { name: "a", reason: "", ttlSeconds: null, override: "hotfix" },
        0,
        new AbortController().signal,
      );
      await engine.change("team/a", (s, now) => stop(s, null, { name: "a" }, now));
      await until(async () => r.got.length === 1, "the stop");
      expect(JSON.parse(r.got[0]?.body ?? "").data.status).toBe("frozen");
      r.stop();
    });
  });

  test("every webhook is sent with User-Agent releasestatus/VERSION, whatever Bun it was built with", async () => {
    const r = receiver();
    await run([hook({ url: r.url })]);
    await starts("a");
    await until(async () => r.got.length === 1, "one delivery");
    expect(r.got[0]?.headers.get("user-agent")).toBe(`releasestatus/${pkg.version}`);
    r.stop();
  });

  test("a receiver down for a while, then up: everything arrives in order, each event once", async () => {
    const r = receiver();
    let down = true;
    r.answerWith(() => (down ? new Response("down", { status: 503 }) : new Response("ok")));
    await run([hook({ url: r.url })]);
    await starts("a", "b", "c");
    await until(async () => r.got.length === 1, "the first attempt");
    // The clock moves only once each failure was heard and its retry planned from it, not while it is on its way.
    const failed = (n: number) => until(async () => webhookStatuses()[0]?.deliveries.failed === n, `${n} failed`);
    await failed(1);
    await clock.advance(5_000); // the second attempt, 5 s later
    await until(async () => r.got.length === 2, "the second attempt");
    await failed(2);
    down = false;
    await clock.advance(300_000); // the third, 5 min later, works; the rest follow at once
    await until(async () => r.got.length === 5, "the rest");
    const delivered = r.got.slice(2);
    expect(types(delivered)).toEqual(["a", "b", "c"]);
    const ids = r.got.map((g) => g.id);
    expect(ids[1]).toBe(ids[0] as string); // the same id on every retry
    expect(ids[2]).toBe(ids[0] as string);
    expect(new Set(ids).size).toBe(3);
    expect(webhookStatuses()[0]?.deliveries).toEqual({ delivered: 3, failed: 2, dropped: 0 });
    r.stop();
  });

  test("Retry-After is honoured", async () => {
    const r = receiver();
    r.answerWith(() => new Response("later", { status: 429, headers: { "Retry-After": "60" } }));
    await run([hook({ url: r.url })]);
    await starts("a");
    await until(async () => r.got.length === 1, "the first attempt");
    // The clock moves only once the 429 was heard and the retry planned from it, not while it is on its way.
    await until(async () => webhookStatuses()[0]?.lastFailure != null, "the 429 to be recorded");
    r.answerWith(() => new Response("ok"));
    await clock.advance(59_000);
    expect(r.got).toHaveLength(1);
    await clock.advance(1_000);
    await until(async () => r.got.length === 2, "the attempt after Retry-After");
    r.stop();
  });

  test("410 Gone disables the webhook until the next reload, and says so", async () => {
    const r = receiver();
    r.answerWith(() => new Response("gone", { status: 410 }));
    const h = hook({ url: r.url });
    await run([h]);
    await starts("a");
    await until(async () => webhookStatuses()[0]?.disabled !== null, "disabled");
    expect(logged.join("\n")).toContain("answered 410 Gone: disabled until the configuration is reloaded");
    await starts("b");
    await clock.advance(86_400_000);
    expect(r.got).toHaveLength(1);
    r.answerWith(() => new Response("ok"));
    await run([h]); // a reload
    await until(async () => r.got.length === 3, "both events after the reload");
    expect(types(r.got.slice(1))).toEqual(["a", "b"]);
    r.stop();
  });

  test("a receiver that hangs is cut after the attempt's limit, and tried again later", async () => {
    const r = receiver();
    r.answerWith(() => new Promise(() => {})); // never answers
    await run([hook({ url: r.url })], 10_000, 200);
    await starts("a");
    await until(async () => webhookStatuses()[0]?.lastFailure !== null, "the attempt cut");
    expect(webhookStatuses()[0]?.lastFailure?.error).toBe("no answer within 0.2 s");
    r.stop();
  });

  test("after the last retry an event is dropped, logged and counted, and the next one goes", async () => {
    const r = receiver();
    r.answerWith(() => new Response("no", { status: 500 }));
    await run([hook({ url: r.url })]);
    await starts("a", "b");
    for (let attempt = 1; attempt < 10; attempt++) {
      await until(async () => r.got.length === attempt, `attempt ${attempt}`);
      const delay = RETRY_SCHEDULE_MS[attempt - 1] as number;
      await until(async () => webhookStatuses()[0]?.retryAt === clock.now() + delay, `attempt ${attempt + 1} planned`);
      await clock.advance(delay);
    }
    await until(async () => webhookStatuses()[0]?.deliveries.dropped === 1, "dropped after the tenth attempt");
    await until(async () => r.got.length === 11, "the next event's first attempt");
    const first = RETRY_SCHEDULE_MS[0] as number;
    await until(async () => webhookStatuses()[0]?.retryAt === clock.now() + first, "its retry planned");
    r.answerWith(() => new Response("ok"));
    await clock.advance(first);
    await until(async () => webhookStatuses()[0]?.deliveries.delivered === 1, "the next event delivered");
    expect(types(r.got).slice(0, 10)).toEqual(Array(10).fill("a"));
    expect(types(r.got).slice(10)).toEqual(["b", "b"]);
    expect(logged.join("\n")).toContain("gave up on event");
    r.stop();
  });

  test("the backlog is bounded: past it the oldest are dropped and counted", async () => {
    const r = receiver();
    r.answerWith(() => new Response("no", { status: 503 }));
    await run([hook({ url: r.url })], 3);
    await starts("a");
    await until(async () => r.got.length === 1, "the first attempt");
    await starts("b", "c", "d", "e");
    // The clock moves only once the failure was heard and its retry planned from it, not while it is on its way.
    await until(async () => webhookStatuses()[0]?.deliveries.failed === 1, "the failure recorded");
    r.answerWith(() => new Response("ok"));
    await clock.advance(5_000);
    await until(async () => types(r.got).at(-1) === "e", "the newest");
    expect(types(r.got.slice(1))).toEqual(["c", "d", "e"]);
    expect(webhookStatuses()[0]?.dropped).toBe(2);
    expect(r.got).toHaveLength(4); // the new oldest waited for the retry the receiver was on, and was not tried at once
    r.stop();
  });

  test("a long-running release is reminded of after remind_after, then each time as long again, once each", async () => {
    const r = receiver();
    await run([hook({ url: r.url, events: ["long-running"], remind_after: "2h" })]);
    await starts("slow");
    await clock.advance(2 * 3_600_000);
    await until(async () => r.got.length === 1, "the first reminder");
    expect(JSON.parse(r.got[0]?.body ?? "{}")).toMatchObject({
      type: "release.long-running",
      data: { name: "slow", reason: "running for 2 h (every 2 h)" },
    });
    await clock.advance(2 * 3_600_000);
    await until(async () => r.got.length === 2, "the second reminder");
    await clock.advance(60_000 * 5);
    expect(r.got).toHaveLength(2);
    r.stop();
  });

  test("a release of several locks is reminded of once, naming all its locks", async () => {
    const r = receiver();
    await run([hook({ url: r.url, events: ["long-running"], remind_after: "2h" })]);
    const o = await engine.start(
      ["team/a", "team/b"],
      { name: "slow", reason: "", ttlSeconds: null },
      0,
      new AbortController().signal,
    );
    expect(o.ok).toBe(true);
    await clock.advance(2 * 3_600_000);
    await until(async () => r.got.length === 1, "the reminder");
    expect(JSON.parse(r.got[0]?.body ?? "{}").data).toMatchObject({ lock: "team/a", locks: ["team/a", "team/b"] });
    await clock.advance(60_000 * 5);
    expect(r.got).toHaveLength(1);
    r.stop();
  });
});
