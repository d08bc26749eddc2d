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

describe("metrics of claims", () => {
  test("a grant counts as started on each lock it holds: a pool's child, every lock of a claim", async () => {
    const d = await withPhones();
    await d.body("/locks/devices/*/start?name=a");
    await d.body("/start?lock=prod/eu&lock=shared-db&name=b");
    const text = await d.body("/metrics");
    expect(text).toContain('releasestatus_releases_started_total{lock="devices/pixel-7"} 1\n');
    expect(text).toContain('releasestatus_releases_started_total{lock="prod/eu"} 1\n');
    expect(text).toContain('releasestatus_releases_started_total{lock="shared-db"} 1\n');
    expect(text).not.toContain('lock="devices/*"');
    expect(text).toContain('releasestatus_releases_started_total{lock="default"} 0\n');
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

const PHONES = `
[[lock]]
name = "devices/pixel-7"

[[lock]]
name = "devices/pixel-8"
`;

const withPhones = async () => daemon({ RS_CONFIG: configFile(PHONES), RS_DB: await freshDb() });
const reasonCode = async (d: Daemon, path: string) => (await d.get(path)).headers.get("x-reason-code");

describe("the lock model's examples", () => {
  test("three starts on a lock of limit 3 are three releases; a fourth waits or is refused full", async () => {
    const d = await withDevices();
    for (const name of ["a", "b", "c"]) expect(await d.body(`/locks/staging/devices/start?name=${name}`)).toBe("1\n");
    expect(await reasonCode(d, "/locks/staging/devices/start?name=d")).toBe("full");
    const waiter = d.get("/locks/staging/devices/start?name=d&wait=30");
    await until(async () => (await status(d, "staging/devices")).queue.length === 1, "d in line");
    expect(await d.body("/locks/staging/devices/stop?id=2")).toBe("1\n");
    expect(await (await waiter).text()).toBe("1\n");
  });

  test("a pool takes one free child at a time and names it; a third waits", async () => {
    const d = await withPhones();
    const first = await d.get("/locks/devices/*/start?name=a");
    expect(await first.text()).toBe("1\n");
    expect(first.headers.get("x-lock")).toBe("devices/pixel-7");
    expect(first.headers.get("x-release-id")).toBe("1");
    const second = await d.get("/locks/devices/*/start?name=b");
    expect(await second.text()).toBe("1\n");
    expect(second.headers.get("x-lock")).toBe("devices/pixel-8");
    expect(second.headers.get("x-release-id")).toBe("2");
    expect(await reasonCode(d, "/locks/devices/*/start?name=c")).toBe("running");
    const third = d.get("/locks/devices/*/start?name=c&wait=30");
    await until(async () => (await status(d, "devices")).queue.length === 1, "c in line");
    expect(await d.body("/locks/devices/pixel-8/stop")).toBe("1\n");
    const got = await third;
    expect(await got.text()).toBe("1\n");
    expect(got.headers.get("x-lock")).toBe("devices/pixel-8");
  });

  test("two locks in one claim are one release on both; a start on either is refused running until it ends", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const res = await d.get("/start?lock=prod/eu&lock=shared-db&name=ana");
    expect(await res.text()).toBe("1\n");
    expect(res.headers.get("x-release-id")).toBe("1");
    expect(res.headers.get("x-lock")).toBe("prod/eu,shared-db");
    expect(await reasonCode(d, "/locks/shared-db/start")).toBe("running");
    expect(await reasonCode(d, "/locks/prod/eu/start")).toBe("running");
    expect(await reasonCode(d, "/start")).toBeNull(); // the default lock is not part of it
    expect((await status(d, "shared-db")).releases.map((r: { id: number }) => r.id)).toEqual([1]);
    expect(await d.body("/locks/shared-db/stop?id=1")).toBe("1\n"); // on any of its locks: the whole release
    expect(await d.body("/locks/prod/eu/start?name=bo")).toBe("1\n");
    expect(await d.body("/locks/shared-db/start?name=bo")).toBe("1\n");
  });

  test("overlapping locks in one claim are 400 invalid with words, and change nothing", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const res = await d.get("/start?lock=prod&lock=prod/eu");
    expect(res.status).toBe(400);
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("invalid");
    expect(res.headers.get("x-reason")).toMatch(/prod and prod\/eu overlap/);
    expect((await status(d, "prod")).running).toBe(false);
  });

  test("a newcomer that would pass a waiting claim it overlaps is refused queued", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect(await d.body("/locks/prod/eu/start?name=ana")).toBe("1\n");
    const waiter = d.get("/start?lock=prod/eu&lock=shared-db&name=bo&wait=30");
    await until(async () => (await status(d, "shared-db")).queue.length === 1, "the claim in line");
    expect(await reasonCode(d, "/locks/shared-db/start?name=cy")).toBe("queued");
    expect(await d.body("/locks/other/start?name=cy")).toBe("1\n"); // overlaps no waiter: starts at once
    expect(await d.body("/locks/prod/eu/stop")).toBe("1\n");
    const got = await waiter;
    expect(await got.text()).toBe("1\n");
    expect(got.headers.get("x-lock")).toBe("prod/eu,shared-db");
  });
});

describe("claims of several locks", () => {
  test("/locks/NAME/start?lock=B claims NAME and B, in the order asked", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const res = await d.get("/locks/shared-db/start?lock=prod/eu&name=ana&format=json");
    const body = await res.json();
    expect(body.ok).toBe(true);
    expect(body.lock).toBe("shared-db");
    expect(body.locks).toEqual(["shared-db", "prod/eu"]);
    expect(res.headers.get("x-lock")).toBe("shared-db,prod/eu");
  });

  test("/start?lock=NAME claims NAME alone, not the default lock, also for a pool", async () => {
    const d = await withPhones();
    const res = await d.get("/start?lock=devices/*&name=ana");
    expect(await res.text()).toBe("1\n");
    expect(res.headers.get("x-lock")).toBe("devices/pixel-7");
    expect((await status(d, "default")).running).toBe(false);
    expect((await status(d, "devices/pixel-7")).releases.map((r: { name: string }) => r.name)).toEqual(["ana"]);
  });

  test("with RS_LOCKS, /start?lock= is allowed on the locks it lists, also without default, and refused on others", async () => {
    const d = await daemon({ RS_DB: await freshDb(), RS_LOCKS: "prod/eu,shared-db" });
    expect(await d.body("/start?lock=prod/eu&lock=shared-db")).toBe("1\n");
    expect(await reasonCode(d, "/start?lock=prod/us")).toBe("unknown-lock");
    expect(await reasonCode(d, "/locks/prod/eu/start?lock=prod/us")).toBe("unknown-lock");
  });

  test("a refused claim's JSON answer shows the status of the first lock it asked for", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    await d.body("/locks/shared-db/start?name=ana");
    const body = await (await d.get("/start?lock=shared-db&lock=prod/eu&format=json")).json();
    expect(body.reason).toBe("running");
    expect(body.status.lock).toBe("shared-db");
  });

  test("a grant on one lock also names its lock in X-Lock", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect((await d.get("/locks/prod/start")).headers.get("x-lock")).toBe("prod");
  });

  test("more than 16 locks in one claim is 400 invalid", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const locks = Array.from({ length: 17 }, (_, i) => `lock=l${i}`).join("&");
    const res = await d.get(`/start?${locks}`);
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toMatch(/17 locks, more than 16/);
  });

  test("the lease of a claim ends it on every lock at once", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect(await d.body("/start?lock=a&lock=b&ttl=1")).toBe("1\n");
    await until(async () => !(await status(d, "b")).running && !(await status(d, "a")).running, "both free");
    const kinds = (await (await d.get("/locks/b/history?format=json")).json()).events.map(
      (e: { kind: string }) => e.kind,
    );
    expect(kinds).toEqual(["expired", "started"]);
  });

  test("renewing by id on one of its locks renews the whole release", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect(await d.body("/start?lock=a&lock=b&ttl=60")).toBe("1\n");
    expect(await d.body("/locks/b/renew?id=1&ttl=600")).toBe("1\n");
    const a = (await status(d, "a")).releases[0];
    const b = (await status(d, "b")).releases[0];
    expect(a.expiresAt).toBe(b.expiresAt);
  });

  test("history and events name every lock of the release", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    await d.body("/start?lock=prod/eu&lock=shared-db&name=ana");
    const [started] = (await (await d.get("/locks/shared-db/history?format=json")).json()).events;
    expect(started).toMatchObject({ kind: "started", lock: "prod/eu", locks: ["prod/eu", "shared-db"] });
    expect(await d.body("/locks/shared-db/history")).toMatch(/release #1 on prod\/eu, shared-db started by ana/);
  });

  test("a pool with no declared children is 400 invalid with words", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    const res = await d.get("/locks/devices/*/start");
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toMatch(
      /pool of devices, which has no declared children: declare them as \[\[lock\]\]/,
    );
  });

  test("the status of each of its locks lists the release with every lock it holds", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    await d.body("/start?lock=prod/eu&lock=shared-db&name=ana");
    for (const lock of ["prod/eu", "shared-db"])
      expect((await status(d, lock)).release).toMatchObject({ id: 1, locks: ["prod/eu", "shared-db"] });
    expect(await d.body("/locks/shared-db/status")).toMatch(/^running: release #1 by ana on prod\/eu, shared-db/);
  });

  test("a pool's lock lists its members, free or held, and /locks shows it before it is used", async () => {
    const d = await withPhones();
    const listed = async () => (await (await d.get("/locks?format=json")).json()).map((s: { lock: string }) => s.lock);
    expect(await listed()).toContain("devices");
    await d.body("/locks/devices/*/start?name=ana");
    const members = (await status(d, "devices")).members;
    expect(members.map((m: { lock: string }) => m.lock)).toEqual(["devices/pixel-7", "devices/pixel-8"]);
    expect(members[0].release).toMatchObject({ id: 1, name: "ana" });
    expect(members[1].release).toBeNull();
  });

  test("a pool is only for start: stop, status and the rest on it are 400 invalid, naming what to do", async () => {
    const d = await withPhones();
    await d.body("/locks/devices/*/start");
    for (const action of ["stop", "renew?id=1", "status", "history"]) {
      const res = await d.get(`/locks/devices/*/${action}`);
      expect(res.status).toBe(400);
      expect(res.headers.get("x-reason")).toMatch(/devices\/\* is a pool: only start takes from it/);
    }
    expect((await status(d, "devices/pixel-7")).running).toBe(true);
  });

  test("a waiter held back only by an earlier pool claim starts as soon as that claim is served with another child", async () => {
    const d = await withPhones();
    await d.body("/locks/devices/pixel-7/start?name=r");
    await d.body("/locks/devices/pixel-7/stop"); // pixel-8 is now the child free the longest: the pool takes it
    await d.body("/locks/prod/eu/start?name=r0");
    const w1 = d.get("/start?lock=devices/*&lock=prod/eu&name=w1&wait=15");
    await until(async () => (await status(d, "prod/eu")).queue.length === 1, "w1 in line");
    const w2 = d.get("/locks/devices/pixel-7/start?name=w2&wait=15"); // behind w1, whose pool may take pixel-7
    await until(async () => (await status(d, "devices/pixel-7")).queue.length === 2, "w2 in line behind w1");
    expect(await d.body("/locks/prod/eu/stop")).toBe("1\n");
    const first = await w1;
    expect([await first.text(), first.headers.get("x-lock")]).toEqual(["1\n", "devices/pixel-8,prod/eu"]);
    expect(await (await w2).text()).toBe("1\n"); // at once, not when its wait runs out
  });

  test("a pool can be one of several locks in a claim", async () => {
    const d = await withPhones();
    const res = await d.get("/start?lock=shared-db&lock=devices/*");
    expect(await res.text()).toBe("1\n");
    expect(res.headers.get("x-lock")).toBe("shared-db,devices/pixel-7");
  });
});

describe("a release of several locks sharing a lock with a limit with another", () => {
  // A = (db, x) and B = (db, y) on db of limit 2: ending B, through any of its locks, leaves A whole.
  const DB = '[[lock]]\nname = "db"\nlimit = 2\n';
  const twoOnDb = async () => {
    const d = await daemon({ RS_CONFIG: configFile(DB), RS_DB: await freshDb() });
    const a = await d.get("/start?lock=db&lock=x&name=a");
    const b = await d.get("/start?lock=db&lock=y&name=b");
    expect([await a.text(), await b.text()]).toEqual(["1\n", "1\n"]);
    return { d, a: a.headers.get("x-release-id"), b: b.headers.get("x-release-id") };
  };
  const holdersOfDb = async (d: Daemon) =>
    ((await status(d, "db")).releases as { id: number }[]).map((r) => String(r.id));

  for (const how of ["/locks/y/stop?id=B", "/locks/db/stop?id=B", "/stop?id=B"])
    test(`stopping B by ${how} leaves A on db: db still has A, and only one more start fits`, async () => {
      const { d, a, b } = await twoOnDb();
      expect(await d.body(how.replace("B", String(b)))).toBe("1\n");
      expect(await holdersOfDb(d)).toEqual([String(a)]);
      expect(await d.body("/locks/db/start?name=c")).toBe("1\n");
      expect(await d.body("/locks/db/start?name=d")).toBe("0\n"); // A and c: full
    });
});

describe("a release of several locks is ended or renewed only by a token that covers every one of them", () => {
  test("a token for staging may not stop or renew, through staging, a release that also holds prod/eu", async () => {
    const sha = (t: string) => new Bun.CryptoHasher("sha256").update(t).digest("hex");
    const [OPS, CI] = ["ops-token-0123456789abcdef", "ci-token-0123456789abcdef0"];
    const file = configFile(
      `[[token]]\nwho = "ops"\ncan = ["release"]\nlocks = ["*"]\nsha256 = "${sha(OPS)}"\n\n` +
        `[[token]]\nwho = "ci"\ncan = ["release"]\nlocks = ["staging"]\nsha256 = "${sha(CI)}"\n`,
    );
    const d = await daemon({ RS_CONFIG: file, RS_DB: await freshDb() });
    const as = (t: string) => ({ headers: { Authorization: `Bearer ${t}` } });
    const res = await d.get("/start?lock=staging/x&lock=prod/eu&name=ops", as(OPS));
    expect(await res.text()).toBe("1\n");
    const id = res.headers.get("x-release-id") ?? "";
    for (const path of [`/locks/staging/x/stop?id=${id}`, `/locks/staging/x/renew?id=${id}&ttl=600`]) {
      const refused = await d.get(path, as(CI));
      expect({ path, status: refused.status, body: await refused.text() }).toEqual({ path, status: 403, body: "0\n" });
      expect(refused.headers.get("x-reason")).toContain("ci may not");
    }
    expect(((await status(d, "prod/eu")).releases as { id: number }[]).map((r) => String(r.id))).toEqual([id]);
    expect(await d.body(`/locks/staging/x/stop?id=${id}`, as(OPS))).toBe("1\n");
  });
});
