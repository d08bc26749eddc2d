// Several replicas on one PostgreSQL database behave as one daemon. Needs root
// and Debian's postgresql; runs in `make test-postgres`.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { configFile, type Daemon, daemonsPerTest, runBinary, statusOf, until } from "./daemon.ts";
import { startCluster } from "./postgres.ts";

let pg: ReturnType<typeof startCluster>;
const daemon = daemonsPerTest();
beforeAll(() => {
  pg = startCluster();
});
afterAll(() => {
  pg?.destroy();
});
afterEach(() => {
  pg.psql("TRUNCATE releasestatus_waiters; UPDATE releasestatus_lock SET release_id = NULL, blocked_since = NULL");
});

const replicas = (n: number, env: Record<string, string> = {}) =>
  Promise.all(Array.from({ length: n }, () => daemon({ RS_DB: pg.url, ...env })));
const status = statusOf;
const statusOn = async (d: Daemon, lock: string) => (await d.get(`/locks/${lock}/status?format=json`)).json();

describe("replicas on one PostgreSQL", () => {
  test("200 concurrent starts spread over three replicas: exactly one 1, 20 rounds", async () => {
    const r = await replicas(3);
    const ids = new Set<string>();
    for (let round = 0; round < 20; round++) {
      const answers = await Promise.all(
        Array.from({ length: 200 }, (_, i) => (r[i % 3] as Daemon).get(`/start?name=r${round}-${i}`)),
      );
      const granted = answers.filter((a) => a.headers.get("x-release-id") !== null);
      const bodies = await Promise.all(answers.map((a) => a.text()));
      expect(bodies.filter((b) => b === "1\n")).toHaveLength(1);
      ids.add(granted[0]?.headers.get("x-release-id") ?? "");
      expect(await (r[(round + 1) % 3] as Daemon).body("/stop")).toBe("1\n");
    }
    expect(ids.size).toBe(20); // every round a new id, from the database
  }, 120_000);

  test("every replica shows the same state, named by its store without the password", async () => {
    const [a, b] = await replicas(2);
    await a?.body("/start?name=sion&reason=v2");
    const s = await status(b as Daemon);
    expect(s.release).toMatchObject({ name: "sion", reason: "v2" });
    expect(s.store).toBe(`PostgreSQL 127.0.0.1:${pg.port}/releasestatus`);
    expect(JSON.stringify(s)).not.toContain("releasestatus-test");
  });

  test("on a newest-first lock, a newer version on one replica supersedes a waiter on another at once", async () => {
    const config = configFile('[[lock]]\nname = "prod"\nqueue = "newest"\n');
    const [a, b] = (await replicas(2, { RS_CONFIG: config })) as [Daemon, Daemon];
    expect(await a.body("/locks/prod/start?name=holder&version=1")).toBe("1\n");
    const older = b.get("/locks/prod/start?name=ana&version=2&wait=60");
    await until(async () => (await statusOn(a, "prod")).queue.length === 1, "ana waiting");
    const newer = a.get("/locks/prod/start?name=ben&version=3&wait=60");
    const passed = await older; // while the holder still runs
    expect(passed.headers.get("x-reason-code")).toBe("superseded");
    expect(passed.headers.get("x-reason")).toBe("superseded by 3 from ben, who now waits in your place");
    expect((await statusOn(b, "prod")).release.name).toBe("holder");
    await b.body("/locks/prod/stop");
    expect(await (await newer).text()).toBe("1\n");
  });

  test("a stop on one replica serves waiters on others, in arrival order", async () => {
    const [a, b, c] = (await replicas(3)) as [Daemon, Daemon, Daemon];
    await a.body("/start?name=holder");
    const first = b.body("/start?name=first&wait=30");
    await until(async () => (await status(a)).queue.length === 1, "the first waiter");
    const second = c.body("/start?name=second&wait=30");
    await until(async () => (await status(a)).queue.length === 2, "the second waiter");
    expect((await status(a)).queue.map((w: { name: string }) => w.name)).toEqual(["first", "second"]);
    expect(await a.body("/start?name=newcomer")).toBe("0\n");

    await a.body("/stop");
    expect(await first).toBe("1\n");
    expect((await status(c)).release.name).toBe("first");
    await c.body("/stop");
    expect(await second).toBe("1\n");
    expect((await status(a)).release.name).toBe("second");
  });

  test("a newcomer is refused with queued while others wait for a free release", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    await a.body("/block");
    const waiter = b.body("/start?name=patient&wait=30");
    await until(async () => (await status(a)).queue.length === 1, "the waiter");
    // Unblocking frees the release for the waiter; nobody may slip in first.
    const [unblocked, newcomer] = await Promise.all([a.body("/unblock"), a.get("/start?name=newcomer")]);
    expect(unblocked).toBe("1\n");
    expect(await newcomer.text()).toBe("0\n");
    // Sent together with the unblock: refused as blocked (before it), queued or running (after it), never granted.
    expect(["blocked", "queued", "running"]).toContain(newcomer.headers.get("x-reason-code") ?? "");
    expect(await waiter).toBe("1\n");
  });

  test("a waiter whose client disconnects leaves the line at once", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    await a.body("/start?name=holder");
    const quitter = new AbortController();
    b.get("/start?name=quitter&wait=60", { signal: quitter.signal }).catch(() => {});
    await until(async () => (await status(a)).queue.length === 1, "the waiter to queue");
    quitter.abort();
    await until(async () => (await status(a)).queue.length === 0, "the waiter to leave", 3000);
    const { events } = await (await a.get("/history?format=json")).json();
    expect(events[0]).toMatchObject({ kind: "left-queue", name: "quitter", reason: "disconnected" });
  });

  test("a lease set through one replica expires even when that replica is killed", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    await a.body("/start?name=doomed&ttl=2");
    await a.stop("SIGKILL");
    await until(async () => !(await status(b)).running, "the lease to run out");
    const { events } = await (await b.get("/history?format=json")).json();
    expect(events[0]).toMatchObject({ kind: "expired", name: "doomed" });
  });

  test("a waiter whose replica is killed is dropped, and the next waiter is served", async () => {
    const [a, b, c] = (await replicas(3)) as [Daemon, Daemon, Daemon];
    await a.body("/start?name=holder");
    b.body("/start?name=on-a-dying-replica&wait=60").catch(() => {});
    await until(async () => (await status(a)).queue.length === 1, "the first waiter");
    const next = c.body("/start?name=next&wait=60");
    await until(async () => (await status(a)).queue.length === 2, "the second waiter");
    await b.stop("SIGKILL");
    await a.body("/stop");
    expect(await next).toBe("1\n");
    expect((await status(a)).release.name).toBe("next");
  }, 30_000);

  test("/stop?id= and /renew?id= on another replica act on a release granted there a moment ago", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    for (let round = 0; round < 10; round++) {
      const start = await b.get(`/locks/k${round}/start?name=ana`);
      const id = start.headers.get("x-release-id");
      expect([await start.text(), await a.body(`/renew?id=${id}&ttl=60`)]).toEqual(["1\n", "1\n"]);
      expect(await a.body(`/stop?id=${id}`)).toBe("1\n"); // not "not-running": wherever the release is
    }
  });

  // With the poll's waking off, only a change's notification can wake a waiter on another replica.
  const PHONES = '[[lock]]\nname = "phones/p7"\n[[lock]]\nname = "phones/p8"\n';
  const notifiedOnly = async () =>
    (await replicas(2, { RS_CONFIG: configFile(PHONES), RS_TEST_POLL_WAKES: "0" })) as [Daemon, Daemon];
  // On a: phones/p7 used once (so p8 is free the longest), region/eu held, and w1 waiting for a phone and region/eu.
  // On b: w2 waiting for phones/p7, held back only by w1's claim, which may take it.
  async function w2BehindAPoolClaim(a: Daemon, b: Daemon, w1Gone: AbortSignal) {
    await a.body("/locks/phones/p7/start?name=r");
    await a.body("/locks/phones/p7/stop");
    await a.body("/locks/region/eu/start?name=r0");
    const w1 = a.get("/start?lock=phones/*&lock=region/eu&name=w1&wait=15", { signal: w1Gone }).catch(() => null);
    await until(async () => (await statusOn(b, "region/eu")).queue.length === 1, "w1 in line");
    const w2 = b.get("/locks/phones/p7/start?name=w2&wait=15");
    await until(async () => (await statusOn(a, "phones/p7")).queue.length === 2, "w2 in line behind w1");
    return { w1, w2 };
  }

  test("a waiter served on one replica wakes, by its notification, one on another that its claim kept back", async () => {
    const [a, b] = await notifiedOnly();
    const { w1, w2 } = await w2BehindAPoolClaim(a, b, new AbortController().signal);
    expect(await a.body("/locks/region/eu/stop")).toBe("1\n");
    expect(await (await w1)?.text()).toBe("1\n"); // with phones/p8
    expect(await (await w2).text()).toBe("1\n");
  });

  test("a waiter that leaves the line on one replica wakes, by its notification, one on another it kept back", async () => {
    const [a, b] = await notifiedOnly();
    const gone = new AbortController();
    const { w2 } = await w2BehindAPoolClaim(a, b, gone.signal);
    gone.abort(); // w1's client goes away: it leaves the line, and phones/p7 is w2's
    expect(await (await w2).text()).toBe("1\n");
  });

  test("a lock forgotten through one replica (its release stopped) is forgotten on the others too", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    const lockList = async (d: Daemon) =>
      (await d.body("/locks")).split("\n").filter((l) => l.split(": ")[1]?.startsWith("team/"));
    expect(await a.body("/locks/team/x/start?name=sion")).toBe("1\n");
    await until(async () => (await lockList(b)).some((l) => l.includes("release #")), "b to show the release");
    expect(await a.body("/locks/team/x/stop")).toBe("1\n");
    await until(async () => (await lockList(b)).length === 0, "b to forget the lock");
    expect((await (await b.get("/locks/team/x/status?format=json")).json()).running).toBe(false);
  });

  test("changes made through one replica reach /events on another", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    const controller = new AbortController();
    const res = await b.get("/events", { signal: controller.signal });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let seen = "";
    await a.body("/block?name=from-a");
    while (!seen.includes("from-a")) seen += new TextDecoder().decode((await reader.read()).value);
    expect(seen).toContain('"kind":"blocked"');
    controller.abort();
  });
});

describe("a read answer on a replica is one snapshot", () => {
  // What a read answered for a lock: the counter, the release it showed running, and when the answer arrived.
  type Seen = { lock: string; lastId: number; running: number | null; answeredAt: number; from: string };
  const seenIn = (s: { lock: string; lastReleaseId: number; release: { id: number } | null }, from: string): Seen => ({
    lock: s.lock,
    lastId: s.lastReleaseId,
    running: s.release?.id ?? null,
    answeredAt: performance.now(),
    from,
  });

  test("under concurrent starts and stops on distinct locks, no answer shows a lock from before a grant with the counter from after it", async () => {
    const r = (await replicas(3)) as Daemon[];
    const locks = ["c0", "c1", "c2", "c3", "c4", "c5"];
    const lockOf = new Map<number, string>(); // release id -> its lock, from the answer that granted it (X-Release-Id)
    const stopSentAt = new Map<number, number>();
    const seen: Seen[] = [];
    let working = true;
    const replica = (n: number) => r[n % r.length] as Daemon;

    const worker = async (lock: string, w: number) => {
      for (let n = 0; n < 40; n++) {
        const res = await replica(w + n).get(`/locks/${lock}/start?name=w${w}&format=json`);
        const body = await res.json();
        const id = Number(res.headers.get("x-release-id"));
        expect(body.ok).toBe(true); // nobody else uses this lock
        lockOf.set(id, lock);
        seen.push(seenIn(body.status, `the start of ${id}`));
        // Held while every replica is asked about it, so that reads overlap it.
        await Promise.all(r.map((d) => status(d, lock)));
        stopSentAt.set(id, performance.now());
        expect(await replica(w + n + 1).body(`/locks/${lock}/stop?id=${id}`)).toBe("1\n");
      }
    };
    const status = async (d: Daemon, lock: string) =>
      seen.push(seenIn(await (await d.get(`/locks/${lock}/status?format=json`)).json(), "/status"));
    const reader = async (k: number) => {
      for (let n = 0; working; n++) {
        const d = replica(k + n);
        await status(d, locks[(k + n) % locks.length] as string);
        if (n % 4 === 0)
          for (const s of await (await d.get("/locks?format=json")).json())
            if (locks.includes(s.lock)) seen.push(seenIn(s, "/locks"));
      }
    };
    const readers = Array.from({ length: 6 }, (_, k) => reader(k));
    await Promise.all(locks.map((lock, w) => worker(lock, w)));
    working = false;
    await Promise.all(readers);

    // With lastReleaseId = K, every release up to K was granted at that moment: the newest of them on the
    // lock, if its stop was not even sent before the answer arrived, must be the one shown running.
    const mixed = seen.filter((s) => {
      if (s.running !== null && s.running > s.lastId) return true;
      let newest = 0;
      for (const [id, lock] of lockOf) if (lock === s.lock && id <= s.lastId && id > newest) newest = id;
      if (newest === 0 || (stopSentAt.get(newest) ?? Infinity) < s.answeredAt) return false;
      return s.running !== newest;
    });
    expect(seen.length).toBeGreaterThan(300);
    expect(mixed.slice(0, 5)).toEqual([]);
  }, 120_000);
});

describe("losing the database", () => {
  test("answers storage and 503 while it is down, grants nothing twice, and resumes by itself", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    expect(await a.body("/start?name=before")).toBe("1\n");
    pg.stop();
    try {
      const during = await Promise.all([a.get("/stop"), b.get("/start?name=during"), a.get("/start")]);
      for (const res of during) {
        expect(res.status).toBe(503);
        expect(res.headers.get("x-reason-code")).toBe("storage");
        expect(await res.text()).toBe("0\n");
      }
      expect((await a.get("/healthz")).status).toBe(503);
      // A flood during the outage is refused at once by the circuit breaker.
      const flood = await Promise.all(Array.from({ length: 100 }, () => b.body("/start")));
      expect(flood.every((body) => body === "0\n")).toBe(true);
    } finally {
      pg.start();
    }
    await until(async () => (await a.get("/healthz")).status === 200, "replica a to recover");
    await until(async () => (await b.get("/healthz")).status === 200, "replica b to recover");
    expect(await b.body("/start?name=after")).toBe("0\n"); // the release from before is still running
    expect((await status(b)).release.name).toBe("before");
    expect(await b.body("/stop")).toBe("1\n");
    expect(a.proc.exitCode).toBeNull();
  }, 60_000);

  test("a database restart does not drop a healthy waiter: it keeps its place and is served", async () => {
    const [a, b] = (await replicas(2)) as [Daemon, Daemon];
    await a.body("/start?name=holder");
    const waiter = b.body("/start?name=patient&wait=120");
    await until(async () => (await status(a)).queue.length === 1, "the waiter to queue");
    pg.stop();
    await Bun.sleep(11_000); // longer than a waiter row may go unvouched for before it is deleted
    pg.start();
    await until(async () => (await a.get("/healthz")).status === 200, "replica a to recover");
    // At once, before the waiter's replica has vouched for it again: a newcomer must still not get ahead of it.
    const [stopped, newcomer] = await Promise.all([a.body("/stop"), a.body("/start?name=newcomer")]);
    expect(stopped).toBe("1\n");
    expect(newcomer).toBe("0\n");
    expect(await waiter).toBe("1\n");
    expect((await status(a)).release.name).toBe("patient");
  }, 60_000);

  test("a database unreachable at start-up: the daemon starts, unhealthy, and heals when it is back", async () => {
    pg.stop();
    let d: Daemon;
    try {
      d = await daemon({ RS_DB: pg.url });
      expect((await d.get("/healthz")).status).toBe(503);
      expect((await d.get("/start")).headers.get("x-reason-code")).toBe("storage");
    } finally {
      pg.start();
    }
    await until(async () => (await d.get("/healthz")).status === 200, "the daemon to reach the database");
    expect(await d.body("/start")).toBe("1\n");
  }, 60_000);

  test("bad credentials or an unknown database are configuration errors: exit 2", async () => {
    const wrongPassword = pg.url.replace(/:[^:@]+@/, ":wrong@");
    const bad = await runBinary([], { RS_PORT: "1", RS_HOST: "127.0.0.1", RS_DB: wrongPassword });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("PostgreSQL refused");
    expect(bad.stderr).not.toContain("wrong@");
    const unknown = await runBinary([], {
      RS_PORT: "1",
      RS_HOST: "127.0.0.1",
      RS_DB: pg.url.replace(/releasestatus$/, "nosuchdb"),
    });
    expect(unknown.code).toBe(2);
  });
});

describe("a small pool of connections that shrinks when idle", () => {
  // Keeps `inFlight` requests going on `d` until `done()` holds (at most `most` requests in all).
  async function load(d: Daemon, inFlight: number, done: () => boolean, most = 5000) {
    let sent = 0;
    const answers: number[] = [];
    const worker = async () => {
      while (!done() && sent < most) {
        sent++;
        const res = await d.get(sent % 2 ? "/start?name=load" : "/stop");
        await res.text();
        answers.push(res.status);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    return answers;
  }

  test("replicas under load stay within RS_DB_POOL + 1 connections each, and give back all but two once idle", async () => {
    // Two replicas of pool 2 need 3 connections each at most: the role's limit of 6 is never in the way.
    const url = pg.role("rs_pool", { owner: true, settings: "CONNECTION LIMIT 6" });
    const [a, b] = (await replicas(2, { RS_DB: url, RS_DB_POOL: "2" })) as [Daemon, Daemon];
    let requests = 0;
    const answers = await Promise.all([a, b].map((d) => load(d, 8, () => ++requests > 600)));
    expect(answers.flat().filter((status) => status !== 200)).toEqual([]);
    // Idle, each keeps one connection for its heartbeat and one for LISTEN.
    await until(async () => pg.connectionsOf("rs_pool") <= 4, "the idle replicas to give connections back", 60_000);
    expect(await a.body("/stop")).toMatch(/^[01]\n$/);
  }, 120_000);

  test("a replica refused a connection by the role's limit answers again once another replica's idle ones are freed", async () => {
    const url = pg.role("rs_crowd", { owner: true, settings: "CONNECTION LIMIT 4" });
    const a = await daemon({ RS_DB: url, RS_DB_POOL: "3" });
    let loaded = false;
    const busy = load(a, 6, () => loaded, 20_000);
    await until(async () => pg.connectionsOf("rs_crowd") === 4, "replica a to take every connection the role may have");
    const b = await daemon({ RS_DB: url, RS_DB_POOL: "3" });
    const refused = await b.get("/start?name=b");
    loaded = true;
    await busy;
    expect(refused.status).toBe(503);
    expect(refused.headers.get("x-reason-code")).toBe("storage");
    await until(async () => (await b.get("/healthz")).status === 200, "replica b to heal", 60_000);
    // Healthy once it has a connection; a's idle ones may still be closing: b's stop of a's last load release is
    // sent until it is answered (200), not 503 storage.
    await until(async () => (await b.get("/stop")).status === 200, "replica b to end a's last release", 60_000);
    expect(await b.body("/start?name=b")).toBe("1\n");
  }, 120_000);
});
