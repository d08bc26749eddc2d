// State on disk: a restart or a crash never loses a release, and the daemon
// never damages or shares a database file it should not.

import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { daemonsPerTest, runBinary, statusOf, tempDir } from "./daemon.ts";

const daemon = daemonsPerTest();
const daemonOn = (db: string, env: Record<string, string> = {}) => daemon({ RS_DB: db, ...env });

describe("restart", () => {
  test("a release running at SIGTERM is still running after a restart, same holder, id and start", async () => {
    const db = join(tempDir(), "state.db");
    const first = await daemonOn(db);
    await first.body("/start?name=sion&reason=v2.3.1");
    await first.body("/block?name=ana&reason=freeze");
    const before = await statusOf(first);
    expect(await first.stop("SIGTERM")).toBe(0);

    const second = await daemonOn(db);
    expect(await second.body("/start?name=bob")).toBe("0\n");
    const after = await statusOf(second);
    expect(after.release).toEqual(before.release);
    expect(after.block).toEqual(before.block);
    expect(second.output()).toMatch(
      /restored: release #1 by sion \(v2\.3\.1\) running since .+Z; releasing blocked by ana since .+Z: freeze/,
    );
  });

  test("release ids keep growing across restarts", async () => {
    const db = join(tempDir(), "state.db");
    const first = await daemonOn(db);
    await first.body("/start");
    await first.body("/stop");
    await first.stop();
    const second = await daemonOn(db);
    const res = await second.get("/start");
    expect(res.headers.get("x-release-id")).toBe("2");
  });

  test("the history survives, newest first", async () => {
    const db = join(tempDir(), "state.db");
    const first = await daemonOn(db);
    await first.body("/start?name=sion&reason=v1");
    await first.body("/stop?name=sion");
    await first.body("/block?name=ana&reason=freeze");
    await first.stop();
    const second = await daemonOn(db);
    await second.body("/unblock?name=ana");
    const { events } = await (await second.get("/history?format=json")).json();
    expect(events.map((e: { kind: string }) => e.kind)).toEqual(["unblocked", "blocked", "stopped", "started"]);
    expect(events[3]).toMatchObject({ releaseId: 1, name: "sion", reason: "v1" });
    expect(events[3].at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });
});

describe("crash", () => {
  // Each round: a client runs start/stop cycles and notes every answer; the daemon is
  // killed with SIGKILL at a random moment; after a restart the state must match the
  // last answered request, or the one that was in flight when the kill came.
  test("kill -9 at random points never loses an acknowledged answer (30 rounds)", async () => {
    const db = join(tempDir(), "crash.db");
    let seed = 42;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    let rounds = 0;
    let acknowledged = 0;
    for (let round = 0; round < 30; round++) {
      const d = await daemonOn(db);
      let running = (await statusOf(d)).running as boolean;
      let inFlight: "start" | "stop" | null = null;
      let killed = false;
      const client = (async () => {
        while (!killed) {
          inFlight = running ? "stop" : "start";
          const body = await d.body(`/${inFlight}?name=round${round}`).catch(() => null);
          if (body === null) return; // the kill cut this request: its outcome is unknown
          if (body !== "1\n") throw new Error(`unexpected ${body} for ${inFlight} in round ${round}`);
          running = inFlight === "start";
          inFlight = null;
          acknowledged++;
        }
      })();
      await Bun.sleep(5 + random() * 60);
      killed = true;
      d.proc.kill("SIGKILL");
      await d.proc.exited;
      await client;

      const after = await daemonOn(db);
      const actual = (await statusOf(after)).running;
      const allowed = inFlight === null ? [running] : [running, inFlight === "start"];
      expect(allowed).toContain(actual);
      await after.stop("SIGKILL");
      rounds++;
    }
    console.log(`crash test: ${rounds} rounds, ${acknowledged} acknowledged answers checked`);
    expect(acknowledged).toBeGreaterThan(rounds);
  });
});

describe("the database file", () => {
  test("a second daemon on the same file refuses to start and the first keeps serving", async () => {
    const db = join(tempDir(), "shared.db");
    const first = await daemonOn(db);
    await first.body("/start?name=sion");
    const second = await runBinary([], { RS_PORT: "1", RS_HOST: "127.0.0.1", RS_DB: db });
    expect(second.code).toBe(2);
    expect(second.stderr).toContain(`another releasestatus is already using ${db}`);
    expect(await first.body("/start")).toBe("0\n");
  });

  test("the file is free again once the first daemon has stopped", async () => {
    const db = join(tempDir(), "shared.db");
    const first = await daemonOn(db);
    await first.stop("SIGKILL");
    const second = await daemonOn(db);
    expect(await second.body("/healthz")).toBe("ok\n");
  });

  test("a corrupt file stops start-up with exit 2 and is left byte for byte as it was", async () => {
    const db = join(tempDir(), "corrupt.db");
    const garbage = Buffer.from("SQLite format 3\0".padEnd(4096, "\u00ff"), "latin1");
    writeFileSync(db, garbage);
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr).toContain(db);
    expect(stderr).toMatch(/damaged|not a releasestatus database/);
    expect(readFileSync(db).equals(garbage)).toBe(true);
  });

  test("a file that is not a database at all is refused and left alone", async () => {
    const db = join(tempDir(), "notes.txt");
    writeFileSync(db, "my release notes\n");
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr).toContain("not a releasestatus database");
    expect(readFileSync(db, "utf8")).toBe("my release notes\n");
  });

  test("another program's SQLite database is refused and left alone", async () => {
    const db = join(tempDir(), "other.db");
    const other = new Database(db);
    other.run("CREATE TABLE customers (id INTEGER)");
    other.close();
    const before = readFileSync(db);
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr).toContain("is not a releasestatus database");
    expect(readFileSync(db).equals(before)).toBe(true);
  });

  test("a database from a newer schema is refused with a clear message", async () => {
    const db = join(tempDir(), "newer.db");
    const d = await daemonOn(db);
    await d.stop();
    const raw = new Database(db);
    raw.run("PRAGMA user_version = 99");
    raw.close();
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr).toContain("schema version 99, newer than this releasestatus understands");
  });

  test("a missing directory is reported with the path and what to do", async () => {
    const db = join(tempDir(), "no", "such", "dir", "state.db");
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr).toContain("does not exist: create it or point RS_DB elsewhere");
  });

  test("the default file is releasestatus.db in the working directory", async () => {
    const dir = tempDir();
    const d = await daemon({ RS_DB: "" }, { cwd: dir });
    await d.body("/start");
    expect(existsSync(join(dir, "releasestatus.db"))).toBe(true);
  });

  test("RS_DB_FILE holds RS_DB in a file, its trailing newline dropped; both at once is refused", async () => {
    const dir = tempDir();
    const secret = join(dir, "db-setting");
    writeFileSync(secret, `${join(dir, "from-file.db")}\n`);
    const d = await daemon({ RS_DB: "", RS_DB_FILE: secret });
    expect((await statusOf(d)).store).toBe(`SQLite ${join(dir, "from-file.db")}`);
    const both = await runBinary([], { RS_PORT: "1", RS_DB: "x.db", RS_DB_FILE: secret });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain("RS_DB and RS_DB_FILE are both set");
  });

  test("RS_DB=:memory: keeps nothing across a restart", async () => {
    const first = await daemonOn(":memory:");
    await first.body("/start");
    await first.stop();
    const second = await daemonOn(":memory:");
    expect(await second.body("/start")).toBe("1\n");
  });
});

describe("/history", () => {
  test("lists events newest first as aligned text lines", async () => {
    const d = await daemonOn(":memory:");
    await d.body("/start?name=sion&reason=v2");
    await d.body("/stop?name=sion");
    const lines = (await d.body("/history")).trimEnd().split("\n");
    expect(lines[0]).toMatch(/^\S+Z {2}stopped {5}release #1 stopped by sion$/);
    expect(lines[1]).toMatch(/^\S+Z {2}started {5}release #1 started by sion: v2$/);
  });

  test("limit= bounds the answer, and a bad limit is 400 invalid", async () => {
    const d = await daemonOn(":memory:");
    for (let i = 0; i < 5; i++) (await d.body("/block")) && (await d.body("/unblock"));
    const { events } = await (await d.get("/history?limit=3&format=json")).json();
    expect(events).toHaveLength(3);
    for (const bad of ["0", "1001", "ten", "-1"]) expect((await d.get(`/history?limit=${bad}`)).status).toBe(400);
  });

  test("is pruned to RS_HISTORY_LIMIT events", async () => {
    const d = await daemonOn(":memory:", { RS_HISTORY_LIMIT: "4" });
    for (let i = 0; i < 5; i++) (await d.body("/block")) && (await d.body("/unblock"));
    const { events } = await (await d.get("/history?limit=1000&format=json")).json();
    expect(events).toHaveLength(4);
  });
});
