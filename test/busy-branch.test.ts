// On a busy branch, against the compiled binary: versions on a start (version=), a lock whose line keeps
// only the newest (queue = "newest": superseded waiters, stale starts), the urgent lane, and an override
// that does not wait behind a freeze's waiters. Each waits for conditions, never for a time.
import { describe, expect, test } from "bun:test";
import { configFile, type Daemon, daemonsPerTest, freshDb, runBinary, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const status = async (d: Daemon, lock = "default") => (await d.get(`/locks/${lock}/status?format=json`)).json();
const history = async (d: Daemon) =>
  (await (await d.get("/history?format=json")).json()).events as { kind: string; version?: string; name: string }[];

describe("a start's version is stored with the release and the waiter, and shown", () => {
  test("status, history and the text status show the version of the release and of each waiter", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect(await d.body("/start?name=ana&version=v2.4.1")).toBe("1\n");
    const waiter = d.get("/start?name=ben&version=2.5.0&wait=60");
    await until(async () => (await status(d)).queue.length === 1, "ben waiting");
    const s = await status(d);
    expect(s.release.version).toBe("v2.4.1");
    expect(s.queue[0].version).toBe("2.5.0");
    expect(await d.body("/status")).toContain("ben, version 2.5.0");
    const events = await history(d);
    expect(events.find((e) => e.kind === "started")?.version).toBe("v2.4.1");
    expect(events.find((e) => e.kind === "waiting")?.version).toBe("2.5.0");
    expect(await d.body("/stop")).toBe("1\n");
    expect(await (await waiter).text()).toBe("1\n");
    expect((await status(d)).release.version).toBe("2.5.0");
  });

  test("a version that is empty or not a version is 400 invalid, says what to send, and starts nothing", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    for (const bad of ["", "1%202", "a/b"]) {
      const res = await d.get(`/start?name=ana&version=${bad}`);
      expect(res.status).toBe(400);
      expect(res.headers.get("x-reason-code")).toBe("invalid");
      expect(res.headers.get("x-reason")).toMatch(/is not a version: use up to 64 letters, digits/);
    }
    expect((await status(d)).running).toBe(false);
  });
});

const NEWEST = `
[[lock]]
name = "prod"
queue = "newest"
`;

describe("on a newest-first lock, each newer version supersedes the waiters it passes, as it passes them", () => {
  test("ten CI jobs queue increasing versions while one release runs: only the highest is granted, the nine were told superseded while the first still ran", async () => {
    const d = await daemon({ RS_CONFIG: configFile(NEWEST), RS_DB: await freshDb() });
    expect(await d.body("/locks/prod/start?name=first&version=100")).toBe("1\n");
    const answers: Promise<Response>[] = [];
    const told: { version: number; code: string | null; runningThen: boolean }[] = [];
    for (let v = 101; v <= 110; v++) {
      const asked = d.get(`/locks/prod/start?name=ci-${v}&version=${v}&wait=120`);
      answers.push(asked);
      // Each job is in line before the next comes, as pipelines on a busy branch are.
      await until(
        async () => (await status(d, "prod")).queue.some((w: { version: string }) => w.version === String(v)),
        `version ${v} waiting`,
      );
      if (v > 101) {
        // The job it passed has its answer already, while the first release still runs.
        const res = await answers[v - 102];
        const running = (await status(d, "prod")).release?.name === "first";
        told.push({ version: v - 1, code: res?.headers.get("x-reason-code") ?? null, runningThen: running });
        expect(await res?.text()).toBe("0\n");
      }
    }
    expect(told).toEqual(
      Array.from({ length: 9 }, (_, i) => ({ version: 101 + i, code: "superseded", runningThen: true })),
    );
    expect((await status(d, "prod")).queue.map((w: { version: string }) => w.version)).toEqual(["110"]);
    expect(await d.body("/locks/prod/stop")).toBe("1\n");
    const last = await answers[9];
    expect(await last?.text()).toBe("1\n");
    expect((await status(d, "prod")).release.version).toBe("110");
    const superseded = (await history(d)).filter((e) => e.kind === "superseded");
    expect(superseded.length).toBe(9);
    const metrics = await d.body("/metrics");
    expect(metrics).toContain('releasestatus_start_refused_total{lock="prod",reason="superseded"} 9\n');
    expect(metrics).toContain('releasestatus_start_refused_total{lock="prod",reason="stale"} 0\n');
  });

  test("a superseded answer says by which version and from whom", async () => {
    const d = await daemon({ RS_CONFIG: configFile(NEWEST), RS_DB: await freshDb() });
    await d.body("/locks/prod/start?name=first&version=v2.4.0");
    const older = d.get("/locks/prod/start?name=ben&version=v2.4.1&wait=60");
    await until(async () => (await status(d, "prod")).queue.length === 1, "ben waiting");
    const newer = d.get("/locks/prod/start?name=ana&version=v2.4.2&wait=60");
    const res = await older;
    expect(res.headers.get("x-reason")).toBe("superseded by v2.4.2 from ana, who now waits in your place");
    await d.body("/locks/prod/stop");
    expect(await (await newer).text()).toBe("1\n");
  });

  test("a start older than the last released version is refused stale; override=REASON passes it", async () => {
    const d = await daemon({ RS_CONFIG: configFile(NEWEST), RS_DB: await freshDb() });
    await d.body("/locks/prod/start?name=ana&version=v2.4.0");
    await d.body("/locks/prod/stop");
    const res = await d.get("/locks/prod/start?name=ben&version=v2.3.9");
    expect(await res.text()).toBe("0\n");
    expect(res.status).toBe(200);
    expect(res.headers.get("x-reason-code")).toBe("stale");
    expect(res.headers.get("x-reason")).toMatch(/^v2\.3\.9 is older than v2\.4\.0, released \S+ by ana on prod/);
    expect(await d.body("/locks/prod/start?name=ben&version=v2.3.9&override=roll%20back")).toBe("1\n");
  });

  test("the last released version is kept with the lock: after the history is pruned and the daemon restarted, an older version is still stale, counted on the lock's own series", async () => {
    const env = { RS_CONFIG: configFile(NEWEST), RS_DB: await freshDb(), RS_HISTORY_LIMIT: "3" };
    const first = await daemon(env);
    expect(await first.body("/locks/prod/start?name=ana&version=100")).toBe("1\n");
    expect(await first.body("/locks/prod/stop")).toBe("1\n");
    for (let i = 0; i < 5; i++) {
      expect(await first.body("/locks/other/start?name=ci")).toBe("1\n");
      expect(await first.body("/locks/other/stop")).toBe("1\n");
    }
    expect(await history(first)).not.toContainEqual(expect.objectContaining({ version: "100" }));
    await first.stop();
    const d = await daemon(env);
    const res = await d.get("/locks/prod/start?name=ben&version=50");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason")).toMatch(/^50 is older than 100, released \S+ by ana on prod/);
    expect(await d.body("/metrics")).toContain('releasestatus_start_refused_total{lock="prod",reason="stale"} 1\n');
  });

  test("a refusal on a declared lock that holds nothing and never did is counted on the lock's own series", async () => {
    const d = await daemon({
      RS_CONFIG: configFile(`${NEWEST}\n[[lock]]\nname = "prod/eu"\n`),
      RS_DB: await freshDb(),
    });
    expect(await d.body("/locks/prod/block?name=ana")).toBe("1\n");
    expect(await d.body("/locks/prod/eu/start?name=ben")).toBe("0\n");
    expect(await d.body("/metrics")).toContain(
      'releasestatus_start_refused_total{lock="prod/eu",reason="blocked"} 1\n',
    );
  });

  test("a lock's queue is fifo or newest: anything else stops the daemon with what to write", async () => {
    const d = await runBinary([], { RS_CONFIG: configFile('[[lock]]\nname = "prod"\nqueue = "lifo"\n') });
    expect(d.code).toBe(2);
    expect(d.stderr).toContain('queue = "lifo" is not valid: expected "fifo"');
  });
});

const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
const CI = "ci-token-0123456789abcdef";
const ONCALL = "oncall-token-0123456789ab";
const TOKENS = `
[[token]]
who = "ci"
can = ["release"]
locks = ["*"]
sha256 = "${sha(CI)}"

[[token]]
who = "oncall"
can = ["release", "override", "urgent"]
locks = ["*"]
sha256 = "${sha(ONCALL)}"
`;
const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });

describe("the urgent lane needs the urgent right, and status marks urgent waiters", () => {
  test("urgent=REASON without the urgent right is 403 forbidden and changes nothing", async () => {
    const d = await daemon({ RS_CONFIG: configFile(TOKENS), RS_DB: await freshDb() });
    const res = await d.get("/start?urgent=INC-42", as(CI));
    expect(res.status).toBe(403);
    expect(res.headers.get("x-reason")).toMatch(
      /^ci may not wait in the urgent lane on default: the token has release/,
    );
    expect((await status(d)).running).toBe(false);
  });

  test("an urgent waiter is listed first, marked urgent with its reason, and served first", async () => {
    const d = await daemon({ RS_CONFIG: configFile(TOKENS), RS_DB: await freshDb() });
    expect(await d.body("/start?name=running", as(CI))).toBe("1\n");
    const ci = d.get("/start?name=build&wait=60", as(CI));
    await until(async () => (await status(d)).queue.length === 1, "the CI job waiting");
    const hotfix = d.get("/start?name=hotfix&urgent=INC-42&wait=60", as(ONCALL));
    await until(async () => (await status(d)).queue.length === 2, "the hotfix waiting");
    const { queue } = await status(d);
    expect(queue.map((w: { name: string; urgent?: string }) => [w.name, w.urgent])).toEqual([
      ["hotfix", "INC-42"],
      ["build", undefined],
    ]);
    expect(await d.body("/status")).toContain("1. hotfix, urgent: INC-42");
    await d.body("/stop", as(ONCALL));
    expect(await (await hotfix).text()).toBe("1\n");
    await d.body("/stop", as(ONCALL));
    expect(await (await ci).text()).toBe("1\n");
  });

  test("urgent= empty is 400 invalid, saying to give the reason", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const res = await d.get("/start?urgent=");
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toMatch(/^urgent is empty: say why/);
  });
});

const HOUR = 3600_000;
const minute = (ms: number) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");
const FREEZE_NOW = `
[[freeze]]
reason = "year-end freeze"
from = "${minute(Date.now() - HOUR)}"
until = "${minute(Date.now() + 2 * HOUR)}"
`;

describe("an override is not queued behind waiters that wait only for the freeze it passes", () => {
  test("a CI job waits through a freeze; the on-call override starts at once, and the CI job still waits", async () => {
    const d = await daemon({ RS_CONFIG: configFile(TOKENS + FREEZE_NOW), RS_DB: await freshDb() });
    const ci = d.get("/start?name=build&wait=60", as(CI));
    await until(async () => (await status(d)).queue.length === 1, "the CI job waiting for the freeze");
    const hotfix = await d.get("/start?name=oncall&override=INC-42%20payments%20down", as(ONCALL));
    expect(await hotfix.text()).toBe("1\n");
    expect((await status(d)).queue.map((w: { name: string }) => w.name)).toEqual(["build"]);
    await d.body("/stop", as(ONCALL));
    const kinds = (await history(d)).map((e) => e.kind);
    expect(kinds.slice(0, 3)).toEqual(["stopped", "started", "overridden"]);
    expect((await status(d)).queue.map((w: { name: string }) => w.name)).toEqual(["build"]); // the freeze still holds it
    ci.catch(() => {}); // it is answered when the daemon stops
  });

  test("an override waiting for the running release starts as it ends, though a CI claim the freeze stops joined first", async () => {
    const d = await daemon({ RS_CONFIG: configFile(TOKENS + FREEZE_NOW), RS_DB: await freshDb() });
    expect(await d.body("/start?name=first&override=INC-A", as(ONCALL))).toBe("1\n");
    const ci = d.get("/start?lock=default&lock=u7&name=ci&wait=60", as(CI));
    await until(async () => (await status(d)).queue.length === 1, "the CI claim waiting");
    const oncall = d.get("/start?name=oncall2&override=INC-B&wait=60", as(ONCALL));
    await until(async () => (await status(d)).queue.length === 2, "the override waiting");
    expect(await d.body("/stop?name=first", as(ONCALL))).toBe("1\n");
    expect(await (await oncall).text()).toBe("1\n");
    expect((await status(d)).queue.map((w: { name: string }) => w.name)).toEqual(["ci"]);
    ci.catch(() => {}); // it is answered when the daemon stops
  });
});
