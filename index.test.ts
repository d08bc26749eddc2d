// The HTTP contract, against the real compiled binary: what every script written
// for the original releasestatus relies on, and what this one adds.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { type Daemon, runBinary, startDaemon, statusOf, until } from "./test/daemon.ts";

let d: Daemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d.stop();
});
// Each test starts from idle and open, whatever the one before it left.
beforeEach(async () => {
  await d.body("/stop");
  await d.body("/unblock");
});

const json = { headers: { Accept: "application/json" } };

describe("/start", () => {
  test("answers 1 when nothing runs, and names the release in X-Release-Id", async () => {
    const res = await d.get("/start?name=sion&reason=v2.3.1");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(await res.text()).toBe("1\n");
    expect(Number(res.headers.get("x-release-id"))).toBeGreaterThan(0);
  });

  test("a second start is refused while a release runs, saying who holds it", async () => {
    await d.body("/start?name=sion&reason=v2.3.1");
    const res = await d.get("/start?name=bob");
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("running");
    expect(res.headers.get("x-reason")).toMatch(
      /^release #\d+ by sion \(v2\.3\.1\) running since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
    );
  });

  test("is refused while releasing is blocked", async () => {
    await d.body("/block?name=ana&reason=freeze");
    const res = await d.get("/start");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("blocked");
    expect(res.headers.get("x-reason")).toContain("blocked by ana");
  });

  test("works by POST, with parameters in a form body", async () => {
    const res = await d.get("/start", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "name=carol&reason=hotfix",
    });
    expect(await res.text()).toBe("1\n");
    const status = await (await d.get("/status?format=json")).json();
    expect(status.release).toMatchObject({ name: "carol", reason: "hotfix" });
  });

  test("release ids only grow", async () => {
    const ids: number[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push(Number((await d.get("/start")).headers.get("x-release-id")));
      await d.body("/stop");
    }
    expect(ids[1]).toBe((ids[0] ?? 0) + 1);
    expect(ids[2]).toBe((ids[1] ?? 0) + 1);
  });

  test("64 concurrent starts: exactly one is answered 1", async () => {
    const bodies = await Promise.all(Array.from({ length: 64 }, (_, i) => d.body(`/start?name=racer${i}`)));
    expect(bodies.filter((b) => b === "1\n")).toHaveLength(1);
    expect(bodies.filter((b) => b === "0\n")).toHaveLength(63);
  });
});

describe("/stop", () => {
  test("answers 1 and ends a running release", async () => {
    await d.body("/start?name=sion");
    expect(await d.body("/stop")).toBe("1\n");
    expect(await d.body("/start")).toBe("1\n");
  });

  test("answers 0 with not-running when nothing runs", async () => {
    const res = await d.get("/stop");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("not-running");
  });

  test("works while blocked, and the block stays", async () => {
    await d.body("/start");
    await d.body("/block");
    expect(await d.body("/stop")).toBe("1\n");
    const status = await (await d.get("/status?format=json")).json();
    expect(status).toMatchObject({ running: false, blocked: true });
  });

  test("works by POST", async () => {
    await d.body("/start");
    expect(await d.body("/stop", { method: "POST" })).toBe("1\n");
  });
});

describe("/block and /unblock", () => {
  test("block answers 1 once, then 0 while already blocked", async () => {
    expect(await d.body("/block?name=ana&reason=freeze")).toBe("1\n");
    const res = await d.get("/block");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("blocked");
  });

  test("unblock answers 1 when blocked, then 0 with not-blocked", async () => {
    await d.body("/block");
    expect(await d.body("/unblock", { method: "POST" })).toBe("1\n");
    const res = await d.get("/unblock");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("not-blocked");
  });

  test("who blocked and why is recorded", async () => {
    await d.body("/block?name=ana&reason=quarterly%20freeze");
    const status = await (await d.get("/status", json)).json();
    expect(status.block).toMatchObject({ name: "ana", reason: "quarterly freeze" });
    expect(status.block.since).toMatch(/Z$/);
  });
});

describe("JSON answers", () => {
  test("a refusal carries a stable reason code, a message and the status", async () => {
    await d.body("/start?name=sion");
    const res = await d.get("/start?format=json");
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body).toMatchObject({ ok: false, reason: "running", status: { running: true } });
    expect(body.message).toContain("sion");
  });

  test("a grant carries ok, the release id and the status", async () => {
    const body = await (await d.get("/start?name=sion", json)).json();
    expect(body.ok).toBe(true);
    expect(body.reason).toBeNull();
    expect(body.releaseId).toBe(body.status.release.id);
  });
});

describe("/status", () => {
  test("says idle in words when nothing runs", async () => {
    expect(await d.body("/status")).toBe("idle: no release is running\n");
  });

  test("names the holder, what is released and since when; and who blocked", async () => {
    await d.body("/start?name=sion&reason=v2.3.1");
    await d.body("/block?name=ana&reason=freeze");
    const lines = (await d.body("/status")).trimEnd().split("\n");
    expect(lines[0]).toMatch(/^running: release #\d+ by sion \(v2\.3\.1\) running since .+Z, for \d+s$/);
    expect(lines[1]).toMatch(/^blocked: releasing blocked by ana since .+Z: freeze$/);
  });

  test("an unnamed holder is shown as an unknown user", async () => {
    await d.body("/start");
    expect(await d.body("/status")).toContain("by an unknown user");
  });

  test("JSON has running, blocked, release and block", async () => {
    await d.body("/start?name=sion&reason=v2");
    const s = await (await d.get("/status", json)).json();
    expect(s).toMatchObject({ running: true, blocked: false, block: null });
    expect(Object.keys(s.release).sort()).toEqual(["expiresAt", "id", "name", "reason", "startedAt"]);
    expect(new Date(s.release.startedAt).toISOString().replace(/\.000Z$/, "Z")).toBe(s.release.startedAt);
  });
});

describe("requests that are themselves wrong", () => {
  test("an unknown path is 404 and changes nothing", async () => {
    const res = await d.get("/begin");
    expect(res.status).toBe(404);
    expect(await res.text()).toBe("0\n");
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("a wrong method on a known path is 405 with Allow", async () => {
    for (const path of ["/start", "/stop", "/block", "/unblock"]) {
      const res = await d.get(path, { method: "DELETE" });
      expect(res.status).toBe(405);
      expect(res.headers.get("allow")).toBe("GET, POST");
      expect(await res.text()).toBe("0\n");
    }
    for (const path of ["/start", "/stop", "/block", "/unblock"]) {
      const res = await d.get(path, { method: "HEAD" });
      expect(res.status).toBe(405);
    }
    const res = await d.get("/status", { method: "POST" });
    expect(res.status).toBe(405);
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("a name with a newline is 400 invalid, and nothing starts", async () => {
    const res = await d.get("/start?name=a%0Ab");
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason-code")).toBe("invalid");
    expect(await res.text()).toBe("0\n");
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("a broken %-escape is 400 invalid", async () => {
    const res = await d.get("/block?name=%E0%A4%A");
    expect(res.status).toBe(400);
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("a non-ASCII name is kept, and the header stays valid", async () => {
    await d.body(`/start?name=${encodeURIComponent("Siôn")}`);
    const res = await d.get("/start");
    expect(res.headers.get("x-reason")).toContain("Si%C3%B4n");
    expect((await (await d.get("/status", json)).json()).release.name).toBe("Siôn");
  });
});

describe("/healthz", () => {
  test("answers 200 ok while the daemon can serve", async () => {
    const res = await d.get("/healthz");
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("ok\n");
  });
});

describe("the log", () => {
  test("has one readable line per state change", async () => {
    await d.body("/start?name=logger&reason=v9");
    await d.body("/stop?name=logger");
    await until(async () => /release #\d+ stopped by logger\n/.test(d.output()), "the stop to be logged");
    expect(d.output()).toMatch(/release #\d+ started by logger: v9\n/);
    expect(d.output()).toMatch(/release #\d+ stopped by logger\n/);
  });
});

describe("start-up", () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ["missing RS_PORT", {}, /RS_PORT is not set/],
    [
      "non-numeric RS_PORT",
      { RS_PORT: "http" },
      /RS_PORT="http" is not valid: expected a whole number from 1 to 65535/,
    ],
    ["RS_PORT out of range", { RS_PORT: "70000" }, /RS_PORT="70000" is not valid/],
    ["RS_PORT zero", { RS_PORT: "0" }, /RS_PORT="0" is not valid/],
    ["a bad RS_LOG_FORMAT", { RS_PORT: "8080", RS_LOG_FORMAT: "xml" }, /RS_LOG_FORMAT="xml" is not valid/],
    [
      "an RS_DB_POOL of no connection",
      { RS_PORT: "8080", RS_DB_POOL: "0" },
      /RS_DB_POOL="0" is not valid: expected a whole number from 1 to 100/,
    ],
  ];
  for (const [what, env, message] of cases) {
    test(`${what} is one clear line on stderr and exit code 2`, async () => {
      const { code, stderr, stdout } = await runBinary([], env);
      expect(code).toBe(2);
      expect(stderr).toMatch(message);
      expect(stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(stdout).toBe("");
    });
  }

  test("an RS_ variable that is not a setting stops start-up, naming the setting it resembles", async () => {
    const { code, stderr, stdout } = await runBinary([], { RS_PORT: "8080", RS_POTR: "8081" });
    expect({ code, stdout }).toEqual({ code: 2, stdout: "" });
    expect(stderr).toMatch(/RS_POTR is not a setting; did you mean RS_PORT\? .*releasestatus --help/);
    expect(stderr.trimEnd().split("\n")).toHaveLength(1);
  });

  test("RS_ variables of the client and of test harnesses (RS_URL, RS_RELEASE_ID, RS_TEST_*) do not stop start-up", async () => {
    const other = await startDaemon({ RS_URL: "http://x:1", RS_RELEASE_ID: "4", RS_TEST_ANYTHING: "1" });
    try {
      expect(await other.body("/healthz")).toBe("ok\n");
    } finally {
      await other.stop();
    }
  });

  test("--help and --version", async () => {
    const help = await runBinary(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("RS_PORT");
    const version = await runBinary(["--version"]);
    expect(version.stdout).toMatch(/^releasestatus \d+\.\d+\.\d+\n$/);
  });

  test("an unknown command exits 2", async () => {
    const { code, stderr } = await runBinary(["strat"]);
    expect(code).toBe(2);
    expect(stderr).toContain("unknown command");
  });

  test("RS_LOG_FORMAT=json logs one JSON object per line", async () => {
    const j = await startDaemon({ RS_LOG_FORMAT: "json" });
    await j.body("/start?name=sion");
    await j.stop();
    const lines = j.output().trimEnd().split("\n");
    const events = lines.map((l) => JSON.parse(l));
    expect(events.find((e) => e.event === "started")).toMatchObject({ level: "info", name: "sion" });
  });
});

describe("shutdown", () => {
  let s: Daemon | null = null;
  afterEach(async () => {
    if (s?.proc.exitCode === null) await s.stop("SIGKILL");
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} exits 0`, async () => {
      s = await startDaemon();
      expect(await s.stop(signal)).toBe(0);
      expect(s.output()).toContain(`${signal} received`);
    });
  }

  test("SIGTERM lets a request in flight finish before exiting", async () => {
    const daemon = await startDaemon();
    s = daemon;
    await daemon.body("/start?name=sion");
    // A waiting start is in flight when the signal arrives: it is answered, not cut.
    const inFlight = daemon.get("/start?name=bob&wait=30&format=json").then((r) => r.json());
    await until(async () => (await statusOf(daemon)).queue.length === 1, "the start to be waiting in line");
    const exited = daemon.stop("SIGTERM");
    const answer = await inFlight; // answered, not cut: a cut request would reject here
    expect(answer).toMatchObject({ ok: false, reason: "shutting-down" });
    expect(answer.message).toContain("shutting down");
    expect(await exited).toBe(0);
  });
});
