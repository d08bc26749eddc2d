// Claims against the compiled binary: locks with a limit ([[lock]] tables), as the
// examples of the lock model say. A declared lock is held by up to its limit of
// releases, each with its own id; one more waits or is refused `full`.
import { describe, expect, test } from "bun:test";
import { configFile, type Daemon, daemonsPerTest, freshDb, runBinary, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const status = async (d: Daemon, lock: string) => (await d.get(`/locks/${lock}/status?format=json`)).json();

const DEVICES = `
[[lock]]
name = "staging/devices"
limit = 3
description = "the three test phones"
`;

const withDevices = async (extra: Record<string, string> = {}) =>
  daemon({ RS_CONFIG: configFile(DEVICES), RS_DB: await freshDb(), ...extra });

describe("a lock with a limit", () => {
  test("three starts are three releases with their own ids; a fourth is refused full", async () => {
    const d = await withDevices();
    const ids: string[] = [];
    for (const name of ["a", "b", "c"]) {
      const res = await d.get(`/locks/staging/devices/start?name=${name}`);
      expect(await res.text()).toBe("1\n");
      ids.push(res.headers.get("x-release-id") ?? "");
    }
    expect(ids).toEqual(["1", "2", "3"]);
    const fourth = await d.get("/locks/staging/devices/start?name=d");
    expect(fourth.status).toBe(200);
    expect(await fourth.text()).toBe("0\n");
    expect(fourth.headers.get("x-reason-code")).toBe("full");
    expect(fourth.headers.get("x-reason")).toMatch(/^staging\/devices holds 3 of 3: release #1 by a/);
  });

  test("its status lists every release and the limit; release is left out", async () => {
    const d = await withDevices();
    await d.body("/locks/staging/devices/start?name=a");
    await d.body("/locks/staging/devices/start?name=b");
    const s = await status(d, "staging/devices");
    expect(s.limit).toBe(3);
    expect(s.running).toBe(true);
    expect(s.releases.map((r: { name: string }) => r.name)).toEqual(["a", "b"]);
    expect(s).not.toHaveProperty("release");
    expect(s.description).toBe("the three test phones");
    const text = await d.body("/locks/staging/devices/status");
    expect(text).toMatch(/^running: 2 of 3: release #1 by a on staging\/devices/);
  });

  test("a lock of limit 1 keeps release in its status, and adds releases and limit", async () => {
    const d = await withDevices();
    await d.body("/start?name=sion");
    const s = await status(d, "default");
    expect(s.release).toMatchObject({ id: 1, name: "sion" });
    expect(s.releases).toHaveLength(1);
    expect(s.limit).toBe(1);
  });

  test("a stop without an id is refused ambiguous and changes nothing; with an id it ends that release", async () => {
    const d = await withDevices();
    await d.body("/locks/staging/devices/start?name=a");
    await d.body("/locks/staging/devices/start?name=b");
    const res = await d.get("/locks/staging/devices/stop");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("ambiguous");
    expect(res.headers.get("x-reason")).toMatch(/give the id of the release to stop, e\.g\. id=1/);
    expect((await status(d, "staging/devices")).releases).toHaveLength(2);
    expect(await d.body("/locks/staging/devices/stop?id=2")).toBe("1\n");
    expect((await status(d, "staging/devices")).releases.map((r: { id: number }) => r.id)).toEqual([1]);
    expect(await d.body("/locks/staging/devices/stop")).toBe("1\n"); // the only one now
  });

  test("a waiter on a full lock is served when a slot frees, in order", async () => {
    const d = await withDevices();
    for (const name of ["a", "b", "c"]) await d.body(`/locks/staging/devices/start?name=${name}`);
    const first = d.get("/locks/staging/devices/start?name=w1&wait=30");
    await until(async () => (await status(d, "staging/devices")).queue.length === 1, "w1 in line");
    const second = d.get("/locks/staging/devices/start?name=w2&wait=30");
    await until(async () => (await status(d, "staging/devices")).queue.length === 2, "w2 in line");
    expect(await d.body("/locks/staging/devices/stop?id=2")).toBe("1\n");
    const got = await first;
    expect(await got.text()).toBe("1\n");
    expect(got.headers.get("x-release-id")).toBe("4");
    expect(await d.body("/locks/staging/devices/stop?id=1")).toBe("1\n");
    expect(await (await second).text()).toBe("1\n");
  });

  test("a release on it still keeps the locks above and below it from starting", async () => {
    const d = await withDevices();
    await d.body("/locks/staging/devices/start?name=a");
    expect((await d.get("/locks/staging/start")).headers.get("x-reason-code")).toBe("running");
    expect((await d.get("/locks/staging/devices/pixel-7/start")).headers.get("x-reason-code")).toBe("running");
  });

  test("a declared lock is known under RS_LOCKS", async () => {
    const d = await withDevices({ RS_LOCKS: "default" });
    expect(await d.body("/locks/staging/devices/start?name=a")).toBe("1\n");
    expect((await d.get("/locks/other/start")).headers.get("x-reason-code")).toBe("unknown-lock");
  });
});

describe("metrics of a lock with a limit", () => {
  test("releasestatus_running counts the releases holding each lock; releasestatus_limit says how many may", async () => {
    const d = await withDevices();
    await d.body("/locks/staging/devices/start?name=a");
    await d.body("/locks/staging/devices/start?name=b");
    await d.body("/start?name=sion");
    const text = await d.body("/metrics");
    expect(text).toContain('releasestatus_running{lock="staging/devices"} 2\n');
    expect(text).toContain('releasestatus_limit{lock="staging/devices"} 3\n');
    expect(text).toContain('releasestatus_running{lock="default"} 1\n');
    expect(text).toContain('releasestatus_limit{lock="default"} 1\n');
  });
});

describe("[[lock]] tables", () => {
  test("a limit that is not a whole number from 1 to 1000 stops start-up with exit code 2 and the file's line", async () => {
    const file = configFile('[[lock]]\nname = "staging/devices"\nlimit = 0\n');
    const started = await runBinary([], { RS_CONFIG: file, RS_PORT: "1" });
    expect(started.code).toBe(2);
    expect(started.stderr).toContain(
      `${file}:3: limit = 0 is not valid: expected how many releases may hold staging/devices`,
    );
  });
});
