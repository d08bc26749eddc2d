// The promise the tool exists for, attacked against the compiled binary: no
// second daemon on the same data through another path, no answer of 1 from a
// database that is gone, no release handed to a client that left, no waiter
// lost from the history, no signal that kills a daemon with waiters.
import { describe, expect, test } from "bun:test";
import { linkSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { daemonsPerTest, historyKinds, leasesRanOutWhileDown, runBinary, statusOf, tempDir, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const settings = (db: string) => ({ RS_PORT: "1", RS_HOST: "127.0.0.1", RS_DB: db });

describe("one daemon per database file, whatever the path", () => {
  for (const [how, link] of [
    ["a hard link", linkSync],
    ["a symbolic link", (target: string, path: string) => symlinkSync(target, path)],
  ] as const) {
    test(`a second daemon on ${how} to the file refuses to start`, async () => {
      const dir = tempDir();
      const db = join(dir, "state.db");
      const first = await daemon({ RS_DB: db });
      expect(await first.body("/start?name=first")).toBe("1\n");
      link(db, join(dir, "other-name.db"));
      const second = await runBinary([], settings(join(dir, "other-name.db")));
      expect(second.code).toBe(2);
      expect(second.stderr).toContain("another releasestatus is already using");
      expect(await first.body("/start?name=second")).toBe("0\n");
    });
  }

  test("a file that is not ours is refused, and nothing is created beside it", async () => {
    const dir = tempDir();
    const foreign = join(dir, "passwd");
    writeFileSync(foreign, "root:x:0:0:root:/root:/bin/bash\n");
    const result = await runBinary([], settings(foreign));
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("is not a releasestatus database");
    expect(readdirSync(dir)).toEqual(["passwd"]);
  });
});

describe("a database removed while the daemon runs", () => {
  test("nothing more is granted, and /healthz and the log say the file is gone", async () => {
    const dir = tempDir();
    const db = join(dir, "data", "state.db");
    mkdirSync(join(dir, "data"));
    const d = await daemon({ RS_DB: db });
    expect(await d.body("/start?name=before")).toBe("1\n");
    expect(await d.body("/stop")).toBe("1\n");
    rmSync(join(dir, "data"), { recursive: true, force: true });
    const res = await d.get("/start?name=after");
    expect(res.status).toBe(503);
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("storage");
    const health = await d.get("/healthz");
    expect(health.status).toBe(503);
    expect(await health.text()).toContain(`the database file ${db} was removed`);
    await until(async () => d.output().includes("was removed"), "the log to say the file was removed");
  });

  test("its write-ahead log removed: nothing more is granted, and what it held is not lost (SIGTERM writes it back)", async () => {
    const db = join(tempDir(), "state.db");
    const d = await daemon({ RS_DB: db });
    const granted = await d.get("/start?name=before");
    expect(await granted.text()).toBe("1\n");
    rmSync(`${db}-wal`); // an operator cleaning up: the commits since the last checkpoint live only in it
    const res = await d.get("/stop");
    expect(res.status).toBe(503);
    expect(res.headers.get("x-reason-code")).toBe("storage");
    const health = await d.get("/healthz");
    expect(health.status).toBe(503);
    expect(await health.text()).toContain(`the write-ahead log ${db}-wal was removed`);
    expect(await d.stop("SIGTERM")).toBe(0);
    const again = await daemon({ RS_DB: db });
    expect((await statusOf(again)).release?.id).toBe(Number(granted.headers.get("x-release-id")));
    expect(await again.body("/start?name=second")).toBe("0\n");
  });

  test("its write-ahead log removed behind a symbolic link to the file: found the same way", async () => {
    const dir = tempDir();
    mkdirSync(join(dir, "real"));
    symlinkSync(join(dir, "real", "state.db"), join(dir, "link.db"));
    const d = await daemon({ RS_DB: join(dir, "link.db") });
    expect(await d.body("/start?name=before")).toBe("1\n");
    rmSync(join(dir, "real", "state.db-wal")); // SQLite keeps it beside the file the link points to
    const res = await d.get("/stop");
    expect(res.status).toBe(503);
    expect(await (await d.get("/healthz")).text()).toContain(
      `the write-ahead log ${join(dir, "real", "state.db-wal")} was removed`,
    );
  });

  test("a change answered storage because the file was moved away is not in the file when it comes back", async () => {
    const dir = tempDir();
    const db = join(dir, "data", "state.db");
    mkdirSync(join(dir, "data"));
    const d = await daemon({ RS_DB: db });
    renameSync(join(dir, "data"), join(dir, "moved"));
    const res = await d.get("/start?name=told-zero");
    expect(res.status).toBe(503);
    expect(await res.text()).toBe("0\n");
    renameSync(join(dir, "moved"), join(dir, "data")); // put back, as the README says, then restarted
    await d.stop("SIGKILL");
    const again = await daemon({ RS_DB: db });
    expect((await statusOf(again)).running).toBe(false);
    expect(await historyKinds(again)).toEqual([]);
  });

  test("found by the watchdog within seconds even when nobody writes", async () => {
    const dir = tempDir();
    const db = join(dir, "state.db");
    const d = await daemon({ RS_DB: db });
    rmSync(db);
    await until(async () => (await d.get("/healthz")).status === 503, "/healthz to report the removed file");
  });
});

describe("a waiter that leaves as the release is handed over", () => {
  test("is never left holding the release (5 rounds of disconnect-and-stop at once)", async () => {
    const d = await daemon({ RS_DB: join(tempDir(), "state.db") });
    for (let round = 0; round < 5; round++) {
      expect(await d.body(`/start?name=holder${round}`)).toBe("1\n");
      const leaving = new AbortController();
      const waiter = d.get("/start?name=leaver&wait=30", { signal: leaving.signal }).catch(() => null);
      await until(async () => (await statusOf(d)).queue.length === 1, "the waiter in line");
      // The stop is sent first and the waiter's connection closed at once: both reach the daemon together.
      const stopped = d.body("/stop");
      leaving.abort();
      await Promise.all([stopped, waiter]);
      await until(async () => (await statusOf(d)).queue.length === 0, "the line to empty");
      // Either it left before the hand-over, or it was handed the release and that was ended at once.
      await until(async () => (await statusOf(d)).release === null, "no release to be running");
    }
    const kinds = await historyKinds(d);
    expect(kinds.filter((k) => k === "left-queue").length + kinds.filter((k) => k === "abandoned").length).toBe(5);
  });
});

describe("the history tells the whole story", () => {
  test("an anonymous stop is recorded as stopped by an unknown user, not by the holder", async () => {
    const d = await daemon();
    await d.body("/start?name=sion");
    await d.body("/stop");
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events[0].message).toMatch(/^release #\d+ stopped by an unknown user$/);
  });

  test("waiters answered shutting-down are recorded as leaving the line", async () => {
    const db = join(tempDir(), "state.db");
    const first = await daemon({ RS_DB: db });
    await first.body("/start?name=holder");
    const waiter = first.body("/start?name=waiter&wait=30");
    await until(async () => (await statusOf(first)).queue.length === 1, "the waiter in line");
    expect(await first.stop("SIGTERM")).toBe(0);
    expect(await waiter).toBe("0\n");
    const second = await daemon({ RS_DB: db });
    const { events } = await (await second.get("/history?format=json")).json();
    expect(events[0]).toMatchObject({ kind: "left-queue", name: "waiter", reason: "shutting down" });
  });

  test("a lease that ran out while the daemon was down is logged at start-up", async () => {
    const db = join(tempDir(), "state.db");
    const first = await daemon({ RS_DB: db });
    expect(await first.body("/start?name=sion&ttl=600")).toBe("1\n");
    await first.stop("SIGKILL");
    leasesRanOutWhileDown(db);
    const second = await daemon({ RS_DB: db });
    // The log is read from a pipe, which may lag behind the daemon's first answer.
    await until(
      async () => /restored: .*lease ran out while the daemon was down/.test(second.output()),
      "the restored line",
    );
    expect(second.output()).toMatch(/release #1 by sion expired: its lease ran out while the daemon was down/);
    expect((await historyKinds(second))[0]).toBe("expired");
    expect((await statusOf(second)).release).toBeNull();
  });
});

describe("signals", () => {
  test("SIGHUP does not stop the daemon or cut its waiters", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    const waiter = d.body("/start?name=waiter&wait=30");
    await until(async () => (await statusOf(d)).queue.length === 1, "the waiter in line");
    d.proc.kill("SIGHUP");
    await until(async () => d.output().includes("SIGHUP received"), "the daemon to log the SIGHUP");
    expect(await d.body("/stop")).toBe("1\n");
    expect(await waiter).toBe("1\n");
  });
});

describe("a storm of waiters", () => {
  test("joining and leaving the line costs no fsync each: 32 clients coming and going, then SIGTERM is not held up by a backlog", async () => {
    const d = await daemon({ RS_DB: join(tempDir(), "state.db") });
    await d.body("/start?name=holder");
    const storm = Array.from({ length: 32 }, async (_, i) => {
      for (let j = 0; j < 10; j++) {
        const leaving = new AbortController();
        const res = d.get(`/start?name=storm${i}&wait=1`, { signal: leaving.signal }).catch(() => null);
        setTimeout(() => leaving.abort(), 5);
        await res;
      }
    });
    await Promise.all(storm);
    const began = Date.now();
    expect(await d.stop("SIGTERM")).toBe(0);
    // Not a timing assertion on speed: a backlog of one fsync per joining waiter (320 of them, each
    // behind the others) would take far longer; shutdown itself may wait 2 s for a client that will not finish.
    expect(Date.now() - began).toBeLessThan(15_000);
  });
});
