// State on disk: a restart or a crash never loses a release, and the daemon
// never damages or shares a database file it should not.

import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { basename, dirname, join } from "node:path";
import { daemonsPerTest, runBinary, statusOf, tempDir, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const daemonOn = (db: string, env: Record<string, string> = {}) => daemon({ RS_DB: db, ...env });

/** The same random moments on every run: a kill that finds a hole finds it again. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

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
  // Each round: a client runs fenced start/stop cycles and notes every acknowledged answer;
  // the daemon is killed with SIGKILL at a random moment; after a restart the history must
  // hold every acknowledged answer, ids must only grow, and the restored state must be what
  // the acknowledged answers imply, with the one request in flight at the kill allowed either way.
  test("kill -9 at random points: every acknowledged answer is in the history after a restart (30 rounds)", async () => {
    const db = join(tempDir(), "crash.db");
    const random = seeded(42);
    let rounds = 0;
    let checked = 0;
    let inFlightRounds = 0;
    for (let round = 0; round < 30; round++) {
      const d = await daemonOn(db);
      const before = await statusOf(d);
      let holding: number | null = before.release?.id ?? null; // the release this client holds, acknowledged
      let highest: number = before.lastReleaseId;
      const acknowledged: { kind: "started" | "stopped"; id: number }[] = [];
      let inFlight: { kind: "started" | "stopped"; id: number | null } | null = null;
      let killed = false;
      const client = (async () => {
        while (!killed) {
          inFlight = holding === null ? { kind: "started", id: null } : { kind: "stopped", id: holding };
          const path = holding === null ? `/start?name=round${round}` : `/stop?id=${holding}`;
          const res = await d.get(path).catch(() => null);
          const body = await res?.text().catch(() => null);
          if (!res || body == null) return; // the kill cut this request: its outcome is unknown
          if (body !== "1\n") throw new Error(`unexpected ${body} for ${path} in round ${round}`);
          if (holding === null) {
            holding = Number(res.headers.get("x-release-id"));
            acknowledged.push({ kind: "started", id: holding });
          } else {
            acknowledged.push({ kind: "stopped", id: holding });
            holding = null;
          }
          inFlight = null;
        }
      })();
      // A random moment to kill at, counted in answers rather than milliseconds, so that a busy machine
      // gives each round as much to check as a quiet one; then a random instant of the next request.
      const answers = Math.floor(random() * 40);
      await Promise.race([
        until(async () => acknowledged.length >= answers, `${answers} acknowledged answers in round ${round}`),
        client, // fails at once on an unexpected answer
      ]);
      await Bun.sleep(random() * 5); // the test's point, not a wait
      killed = true;
      d.proc.kill("SIGKILL");
      await d.proc.exited;
      await client;

      const after = await daemonOn(db);
      const { events } = await (await after.get("/history?format=json&limit=1000")).json();
      const history = [...(events as { kind: string; releaseId: number | null }[])].reverse(); // oldest first
      const has = (kind: string, id: number) => history.some((e) => e.kind === kind && e.releaseId === id);
      for (const a of acknowledged) expect(has(a.kind, a.id)).toBe(true);
      const starts = history.filter((e) => e.kind === "started").map((e) => e.releaseId as number);
      for (let i = 1; i < starts.length; i++) expect(starts[i]).toBeGreaterThan(starts[i - 1] as number);
      for (const a of acknowledged) if (a.kind === "started") highest = Math.max(highest, a.id);

      const restored = (await statusOf(after)).release?.id ?? null;
      const flying = inFlight as { kind: "started" | "stopped"; id: number | null } | null;
      if (flying === null) expect(restored).toBe(holding);
      else if (flying.kind === "started") {
        inFlightRounds++;
        // Either the start never committed, or it did with the next id (and is in the history).
        if (restored !== null) {
          expect(restored).toBe(highest + 1);
          expect(has("started", restored)).toBe(true);
        }
      } else {
        inFlightRounds++;
        expect([flying.id, null]).toContain(restored); // the stop committed or not, nothing else
      }
      checked += acknowledged.length;
      await after.stop("SIGKILL");
      rounds++;
    }
    console.log(
      `crash test: ${rounds} rounds, ${checked} acknowledged answers checked against the history, ${inFlightRounds} rounds with a request in flight at the kill`,
    );
  });
});

describe("crash with many clients", () => {
  // Changes that arrive together are committed together: a kill -9 must lose none of those answered,
  // on a lock of each client's own and on one they all contend for.
  test("kill -9 while ten clients change locks at once: every acknowledged answer is in the history (15 rounds)", async () => {
    const random = seeded(7);
    let checked = 0;
    for (let round = 0; round < 15; round++) {
      const db = join(tempDir(), "crash-many.db");
      const d = await daemonOn(db);
      const acknowledged: { lock: string; kind: "started" | "stopped"; id: number }[] = [];
      let killed = false;
      const client = async (lock: string) => {
        let holding: number | null = null;
        while (!killed) {
          const path: string = holding === null ? `/locks/${lock}/start?name=c` : `/locks/${lock}/stop?id=${holding}`;
          const res: Response | null = await d.get(path).catch(() => null);
          const body = await res?.text().catch(() => null);
          if (!res || body == null) return; // cut by the kill: unknown either way
          if (body !== "1\n") continue; // another client holds the shared lock
          if (holding === null) {
            holding = Number(res.headers.get("x-release-id"));
            acknowledged.push({ lock, kind: "started", id: holding });
          } else {
            acknowledged.push({ lock, kind: "stopped", id: holding });
            holding = null;
          }
        }
      };
      const locks = ["a", "b", "c", "d", "e", "f", "shared", "shared", "shared", "shared"];
      const clients = Promise.all(locks.map(client));
      // As above: the kill comes after a random number of answers, then at a random instant.
      const answers = 10 + Math.floor(random() * 30);
      await until(async () => acknowledged.length >= answers, `${answers} acknowledged answers in round ${round}`);
      await Bun.sleep(random() * 5); // the test's point, not a wait
      killed = true;
      d.proc.kill("SIGKILL");
      await d.proc.exited;
      await clients;

      const after = await daemonOn(db);
      for (const lock of new Set(locks)) {
        const { events } = await (await after.get(`/locks/${lock}/history?format=json&limit=1000`)).json();
        const history = events as { kind: string; releaseId: number | null }[];
        for (const a of acknowledged.filter((a) => a.lock === lock))
          expect(history.some((e) => e.kind === a.kind && e.releaseId === a.id)).toBe(true);
      }
      checked += acknowledged.length;
      await after.stop("SIGKILL");
    }
    console.log(`crash test with ten clients: ${checked} acknowledged answers checked against the history`);
  });
});

describe("a damaged write-ahead log", () => {
  // Five releases started, then kill -9: they live only in the log, in frames SQLite checks one after another.
  async function crashedWithFiveReleases() {
    const db = join(tempDir(), "state.db");
    const d = await daemonOn(db);
    for (let i = 1; i <= 5; i++) expect(await d.body(`/locks/l${i}/start?name=first`)).toBe("1\n");
    await d.stop("SIGKILL");
    const log = readFileSync(`${db}-wal`);
    const frameSize = 24 + log.readUInt32BE(8); // a frame: its 24-byte header, then a page
    const frames = Math.floor((log.length - 32) / frameSize);
    const frameAt = (n: number) => 32 + (n - 1) * frameSize; // n counts from 1
    return { db, log, frames, frameSize, frameAt };
  }
  const flipped = (bytes: Buffer, at: number, count = 16) => {
    const copy = Buffer.from(bytes);
    for (let i = at; i < at + count; i++) copy[i] = (copy[i] as number) ^ 0xff;
    return copy;
  };
  const running = async (db: string) => {
    const d = await daemonOn(db);
    return ((await (await d.get("/locks?format=json")).json()) as { running: boolean }[]).filter((l) => l.running)
      .length;
  };

  test("with frames of the log after a bad one stops start-up with exit 2 and one line, and leaves both files as they were", async () => {
    const { db, log, frames, frameAt } = await crashedWithFiveReleases();
    expect(frames).toBeGreaterThan(3);
    const damaged = flipped(log, frameAt(3) + 24 + 100); // 16 bytes of frame 3's page
    writeFileSync(`${db}-wal`, damaged);
    const file = readFileSync(db);
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr.trimEnd().split("\n")).toEqual([
      expect.stringContaining(`the write-ahead log ${db}-wal is damaged: frame 3 of ${frames} fails its checksum`),
    ]);
    expect(readFileSync(db).equals(file)).toBe(true);
    expect(readFileSync(`${db}-wal`).equals(damaged)).toBe(true);
    writeFileSync(`${db}-wal`, log); // the same files with the log as it was restore all five
    expect(await running(db)).toBe(5);
  });

  test("ending in the middle of a frame (a torn last write) still starts, with what it holds", async () => {
    const { db, log, frames, frameAt } = await crashedWithFiveReleases();
    writeFileSync(`${db}-wal`, log.subarray(0, frameAt(frames) + 100));
    expect(await running(db)).toBeGreaterThanOrEqual(4); // the last commit may have been the torn one
  });

  test("whose last frame, whole in length, fails its checksum starts, says so, keeps a copy, and hands out no id again", async () => {
    const { db, log, frames, frameAt } = await crashedWithFiveReleases();
    const damaged = flipped(log, frameAt(frames) + 24 + 100); // the page of the last frame: the fifth start's commit
    writeFileSync(`${db}-wal`, damaged);
    const d = await daemonOn(db);
    expect(d.output()).toContain(`the last frame (${frames}) of the write-ahead log ${db}-wal fails its checksum`);
    const copies = readdirSync(dirname(db)).filter((f) => f.startsWith(`${basename(db)}-wal-damaged-`));
    expect(copies).toHaveLength(1);
    expect(readFileSync(join(dirname(db), copies[0] as string)).equals(damaged)).toBe(true);
    // The lost commit granted id 5: a release now gets an id no commit before it can have handed out.
    const res = await d.get("/locks/after/start?name=next");
    expect(await res.text()).toBe("1\n");
    expect(Number(res.headers.get("x-release-id"))).toBeGreaterThan(10_000);
  });

  test("whose later frames carry the salts of an older log still starts", async () => {
    const { db, log, frames, frameAt } = await crashedWithFiveReleases();
    const older = Buffer.from(log);
    // Frames left from before the log was restarted: another pair of salts (bytes 8-15 of a frame's header).
    for (let n = 4; n <= frames; n++)
      older.writeUInt32BE((older.readUInt32BE(frameAt(n) + 8) + 0x1000) >>> 0, frameAt(n) + 8);
    writeFileSync(`${db}-wal`, older);
    await daemonOn(db);
  });
});

describe("a client that resets its connection", () => {
  // Nobody can hear a 1 sent on a connection reset right after the request: such a grant must not stand.
  test("right after asking for a release is not left holding it: nothing is started, or the grant is abandoned", async () => {
    const d = await daemonOn(join(tempDir(), "reset.db"));
    const clients = 20;
    // Paused, the daemon reads each request with its reset already there, as a quiet machine would: on a busy
    // one the reset could otherwise come after the 1 was written, which no server can tell from one lost on the wire.
    d.proc.kill("SIGSTOP");
    await Promise.all(
      Array.from(
        { length: clients },
        (_, i) =>
          new Promise<void>((done) => {
            const socket = connect(d.port, "127.0.0.1", () =>
              socket.write(`GET /locks/reset/l${i}/start?name=gone${i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, () => {
                socket.resetAndDestroy();
                done();
              }),
            );
            socket.on("error", () => done());
          }),
      ),
    );
    d.proc.kill("SIGCONT");
    // Each request read with its reset behind it starts nothing (the log says the client went away), or its grant
    // is abandoned; one whose reset came before it was read is not even handled. A request on a fresh connection,
    // accepted after the twenty, is answered after they were read.
    expect(await d.body("/locks/reset/marker/start?name=marker")).toBe("1\n");
    const count = async (kind: string) =>
      ((await (await d.get("/locks/reset/history?format=json&limit=1000")).json()).events as { kind: string }[]).filter(
        (e) => e.kind === kind,
      ).length;
    const heldByGone = async () =>
      ((await (await d.get("/locks?format=json")).json()) as { lock: string; running: boolean }[]).filter(
        (l) => l.running && l.lock !== "reset/marker",
      ).length;
    await until(
      async () => (await count("started")) === (await count("abandoned")) + 1 && (await heldByGone()) === 0,
      "every grant to a client that reset to be abandoned",
    );
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

  test("a releasestatus database with a table dropped is refused with one line saying what is missing", async () => {
    const db = join(tempDir(), "dropped.db");
    await (await daemonOn(db)).stop();
    const raw = new Database(db);
    raw.run("DROP TABLE webhooks");
    raw.close();
    const before = readFileSync(db);
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr.trimEnd().split("\n")).toEqual([expect.stringContaining(`${db} does not have the tables`)]);
    expect(stderr).toContain("webhooks");
    expect(readFileSync(db).equals(before)).toBe(true);
  });

  test("a releasestatus database without the row that counts release ids is refused: ids would be handed out again", async () => {
    const db = join(tempDir(), "no-counter.db");
    await (await daemonOn(db)).stop();
    const raw = new Database(db);
    raw.run("DELETE FROM lock WHERE name = ''");
    raw.close();
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr.trimEnd().split("\n")).toEqual([expect.stringContaining("the row that counts release ids")]);
  });

  test("a schema version below zero is refused with one line naming it", async () => {
    const db = join(tempDir(), "negative.db");
    await (await daemonOn(db)).stop();
    const raw = new Database(db);
    raw.run("PRAGMA user_version = -1");
    raw.close();
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: db });
    expect(code).toBe(2);
    expect(stderr.trimEnd().split("\n")).toEqual([
      expect.stringContaining(`${db} has schema version -1, which no releasestatus writes`),
    ]);
  });

  test("RS_DB naming something that is not a regular file (/dev/null) is refused as such", async () => {
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_DB: "/dev/null" });
    expect(code).toBe(2);
    expect(stderr.trimEnd().split("\n")).toEqual([
      "releasestatus: RS_DB=/dev/null is not a regular file: point RS_DB at a file (it is created if missing)",
    ]);
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
