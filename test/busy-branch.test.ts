// On a busy branch, against the compiled binary: versions on a start (version=), a lock whose line keeps
// only the newest (queue = "newest": superseded waiters, stale starts), the urgent lane, and an override
// that does not wait behind a freeze's waiters. Each waits for conditions, never for a time.
import { describe, expect, test } from "bun:test";
import { configFile, type Daemon, daemonsPerTest, freshDb, until } from "./daemon.ts";

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
