// Named locks in a tree over HTTP, against the compiled binary: /locks/NAME/…
// behaves as the original's endpoints do, on lock NAME; the original's paths act
// on the default lock, and /block on the root.
import { describe, expect, test } from "bun:test";
import { configFile, type Daemon, daemonsPerTest, freshDb, statusOf, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const json = { headers: { Accept: "application/json" } };
const status = async (d: Daemon, lock: string) => (await d.get(`/locks/${lock}/status?format=json`)).json();

describe("/locks/NAME/…", () => {
  test("every endpoint acts on its own lock, with the original's answers", async () => {
    const d = await daemon();
    const res = await d.get("/locks/prod/eu/start?name=sion&reason=v2");
    expect(await res.text()).toBe("1\n");
    const id = res.headers.get("x-release-id");
    expect(await d.body("/locks/prod/us/start?name=bob")).toBe("1\n");
    expect(await d.body("/start?name=carol")).toBe("1\n"); // the default lock is just another lock
    expect((await status(d, "prod/eu")).release).toMatchObject({ name: "sion", reason: "v2" });
    expect(await d.body(`/locks/prod/eu/renew?id=${id}&ttl=60`)).toBe("1\n");
    expect(await d.body(`/locks/prod/us/stop?id=${id}`)).toBe("0\n"); // both lock and id must match
    expect(await d.body(`/locks/prod/eu/stop?id=${id}`)).toBe("1\n");
  });

  test("a lock above a running one is refused, naming the release that holds it", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=sion");
    const res = await d.get("/locks/prod/start?name=bob");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("running");
    expect(res.headers.get("x-reason")).toMatch(/^release #1 by sion on prod\/eu running since/);
  });

  test("/block blocks every lock; a lock's unblock says when it is still blocked from above", async () => {
    const d = await daemon();
    expect(await d.body("/locks/prod/block?name=ana&reason=freeze")).toBe("1\n");
    expect((await d.get("/locks/prod/eu/start")).headers.get("x-reason")).toMatch(/^releasing on prod blocked by ana/);
    expect(await d.body("/block?name=root&reason=holidays")).toBe("1\n");
    expect(await d.body("/locks/staging/start")).toBe("0\n");
    const lifted = await d.get("/locks/prod/unblock?name=ana");
    expect(await lifted.text()).toBe("1\n");
    expect(lifted.headers.get("x-reason")).toMatch(/^still blocked from above: releasing blocked by root/);
    expect((await statusOf(d)).blocked).toBe(true); // /status says so when the root is blocked
    expect(await d.body("/unblock")).toBe("1\n");
    expect(await d.body("/locks/staging/start")).toBe("1\n");
  });

  test("a waiter for a whole subtree is served before a newcomer on one of its parts", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=first");
    const whole = d.body("/locks/prod/start?name=whole&wait=30");
    await until(async () => (await status(d, "prod")).queue.length === 1, "the subtree waiter in line");
    expect((await d.get("/locks/prod/us/start?name=newcomer")).headers.get("x-reason-code")).toBe("queued");
    expect(await d.body("/locks/prod/eu/stop")).toBe("1\n");
    expect(await whole).toBe("1\n");
  });

  test("200 concurrent starts spread over 10 locks: exactly one 1 per lock", async () => {
    const d = await daemon();
    const bodies = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        d.body(`/locks/team${i % 10}/start?name=r${i}`).then((b) => [i % 10, b] as const),
      ),
    );
    for (let lock = 0; lock < 10; lock++) expect(bodies.filter(([l, b]) => l === lock && b === "1\n")).toHaveLength(1);
  });
});

describe("GET /locks", () => {
  test("lists every lock that is held, blocked or waited for, in text and JSON", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=sion&reason=v2.3.1");
    await d.body("/locks/staging/block?name=ana");
    await d.body("/locks/old/start");
    await d.body("/locks/old/stop"); // holds nothing now: forgotten, with its history kept
    const text = await d.body("/locks");
    expect(text).not.toMatch(/^old:/m);
    expect(text).toMatch(/^running: prod\/eu: release #1 by sion \(v2\.3\.1\) on prod\/eu running since/m);
    const list = await (await d.get("/locks", json)).json();
    expect(list.map((l: { lock: string }) => l.lock)).toEqual(["prod", "prod/eu", "staging"]);
    expect(list.find((l: { lock: string }) => l.lock === "staging").blocked).toBe(true);
  });
});

describe("the board and /locks list every lock a start may be asked of, and only those", () => {
  const listed = async (d: Daemon) =>
    ((await (await d.get("/locks", json)).json()) as { lock: string }[]).map((l) => l.lock);

  test("with RS_LOCKS leaving default out, neither the board nor /locks shows default", async () => {
    const d = await daemon({ RS_DB: await freshDb(), RS_LOCKS: "staging,prod/eu" }); // SQLite keeps default's row
    await d.body("/locks/staging/start?name=sion");
    expect(await listed(d)).not.toContain("default");
    expect(await d.body("/locks")).not.toMatch(/^\w+: default: /m);
  });

  test("a lock that RS_LOCKS or a [[lock]] names is shown before it is used, free", async () => {
    const d = await daemon({
      RS_LOCKS: "prod/eu,staging",
      RS_CONFIG: configFile('[[lock]]\nname = "qa"\nlimit = 2\n'),
    });
    expect(await listed(d)).toEqual(["prod/eu", "qa", "staging"]);
    expect(await d.body("/locks")).toMatch(/^idle: staging: no release is running on staging$/m);
  });

  test("a pool whose parent RS_LOCKS leaves out shows its members, not the parent: every lock listed can be asked", async () => {
    const pool = '[[lock]]\nname = "devices/pixel-7"\n[[lock]]\nname = "devices/pixel-8"\n';
    const d = await daemon({ RS_LOCKS: "staging", RS_CONFIG: configFile(pool) });
    await d.body("/locks/devices/pixel-7/start?name=sion");
    expect(await listed(d)).toEqual(["devices/pixel-7", "devices/pixel-8", "staging"]);
    for (const lock of await listed(d)) expect((await d.get(`/locks/${lock}/status`)).status).toBe(200);
    expect(await d.body("/locks")).not.toMatch(/^\w+: devices: /m);
  });

  test("a lock a waiter of an overlapping claim stands ahead of is not idle: its status says queued, and who waits", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=sion");
    const ana = d.get("/locks/prod/start?name=ana&wait=30"); // waits for prod/eu; ahead of any start on prod/us
    await until(async () => (await status(d, "prod")).queue.length === 1, "ana in line");
    expect((await d.get("/locks/prod/us/start?name=bob")).headers.get("x-reason-code")).toBe("queued");
    expect(await d.body("/locks/prod/us/status")).toMatch(
      /^queued: 1 waiting ahead of a start on prod\/us: ana for prod$/m,
    );
    const s = await (await d.get("/locks/prod/us/status", json)).json();
    expect(s.stoppedBy).toEqual([{ why: "queued", message: "1 waiting ahead of a start on prod/us: ana for prod" }]);
    expect(await d.body("/locks/prod/eu/stop")).toBe("1\n");
    expect(await (await ana).text()).toBe("1\n");
  });

  test("a group on the board is a lock of its own: held from below, it shows held and names the lock below", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=sion");
    const prod = ((await (await d.get("/locks", json)).json()) as { lock: string }[]).find((l) => l.lock === "prod");
    expect(prod).toMatchObject({ stoppedBy: [{ why: "held" }], heldBy: { lock: "prod/eu", name: "sion" } });
    expect(await d.body("/locks")).toMatch(/^held: prod: release #1 by sion on prod\/eu running since \S+$/m);
  });
});

describe("reading a lock", () => {
  test("/history covers every lock and names each; /locks/NAME/history the lock and those under it", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=a");
    await d.body("/locks/staging/start?name=b");
    await d.body("/start?name=c");
    const all = (await (await d.get("/history", json)).json()).events;
    expect(all.map((e: { lock: string }) => e.lock)).toEqual(["default", "staging", "prod/eu"]);
    const prod = (await (await d.get("/locks/prod/history", json)).json()).events;
    expect(prod.map((e: { lock: string }) => e.lock)).toEqual(["prod/eu"]);
    expect(await d.body("/history")).toMatch(/release #1 on prod\/eu started by a/);
  });

  test("/locks/NAME/events streams only what concerns that lock, and blocks above it", async () => {
    const d = await daemon();
    const res = await d.get("/locks/prod/eu/events");
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const seen: string[] = [];
    const reading = (async () => {
      const decoder = new TextDecoder();
      let text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        text += decoder.decode(value);
        for (const m of text.matchAll(/"kind":"([a-z-]+)","releaseId":[^,]+,"name":"([^"]*)"/g))
          seen.push(`${m[1]} ${m[2]}`);
        text = text.slice(text.lastIndexOf("\n\n") + 2);
      }
    })();
    await d.body("/locks/staging/start?name=elsewhere");
    await d.body("/block?name=root");
    await d.body("/locks/prod/eu/start?name=here");
    await until(async () => seen.length >= 1, "the block above to arrive");
    await d.body("/unblock?name=root");
    await d.body("/locks/prod/eu/start?name=here");
    await until(async () => seen.includes("started here"), "the start on the lock to arrive");
    expect(seen).toEqual(["blocked root", "unblocked root", "started here"]);
    await reader.cancel();
    await reading.catch(() => {});
  });
});

describe("bad names and limits", () => {
  for (const [path, code] of [
    ["/locks//start", 400],
    ["/locks/PROD/start", 400],
    ["/locks/prod%2Feu/start", 400],
    ["/locks/-prod/start", 400],
    [`/locks/${"a".repeat(33)}/start`, 400],
    [`/locks/${Array.from({ length: 26 }, () => "abc").join("/")}/start`, 400],
    ["/locks/prod/launch", 404],
    ["/locks/prod", 404],
  ] as const) {
    test(`${path.slice(0, 40)} is ${code} with body 0, and changes nothing`, async () => {
      const d = await daemon();
      const res = await d.get(path);
      expect(res.status).toBe(code);
      expect(await res.text()).toBe("0\n");
      expect(await d.body("/locks")).toBe("");
    });
  }

  test("refused starts on ever new names grow neither the locks nor the metrics", async () => {
    const d = await daemon();
    await d.body("/block?name=ana"); // every start is refused, so no name is ever used
    for (let i = 0; i < 50; i++) expect(await d.body(`/locks/random${i}/start`)).toBe("0\n");
    expect(await d.body("/locks")).toBe(
      `blocked: /: releasing blocked by ana since ${(await statusOf(d)).block.since}\n`,
    );
    expect(await d.body("/metrics")).not.toContain("random");
  });

  test("RS_LOCKS lists the only names allowed: any other is 404 unknown-lock", async () => {
    const d = await daemon({ RS_LOCKS: "default,staging,prod/eu" });
    expect(await d.body("/locks/prod/eu/start")).toBe("1\n");
    const res = await d.get("/locks/prod/us/start");
    expect(res.status).toBe(404);
    expect(res.headers.get("x-reason-code")).toBe("unknown-lock");
  });

  test("without default in RS_LOCKS, the original's paths answer 404 unknown-lock; /block still acts on the root", async () => {
    const d = await daemon({ RS_LOCKS: "staging,prod/eu" });
    const res = await d.get("/start");
    expect(res.status).toBe(404);
    expect(res.headers.get("x-reason-code")).toBe("unknown-lock");
    expect(await d.body("/block?name=ana")).toBe("1\n");
    expect(await d.body("/locks/staging/start")).toBe("0\n");
  });

  test("beyond RS_MAX_LOCKS a new name is refused, so a loop of random names cannot grow the state", async () => {
    const d = await daemon({ RS_MAX_LOCKS: "3" });
    for (const name of ["a", "b", "c"]) expect(await d.body(`/locks/${name}/start`)).toBe("1\n");
    const res = await d.get("/locks/d/start");
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toContain("RS_MAX_LOCKS");
    expect(await d.body("/locks/a/stop")).toBe("1\n"); // existing locks still work
  });
});

describe("no token can use up RS_MAX_LOCKS for locks outside its scope", () => {
  const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
  const STAGE = "stage-token-0123456789abcdef";
  const PROD = "prod-token-0123456789abcdef";
  const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });
  const team = configFile(
    [
      ["stage", ["staging"], STAGE],
      ["prod", ["prod"], PROD],
    ]
      .map(
        ([who, locks, token]) =>
          `[[token]]\nwho = "${who}"\ncan = ["release", "block"]\nlocks = ${JSON.stringify(locks)}\nsha256 = "${sha(token as string)}"\n`,
      )
      .join("\n"),
  );
  // The locks /locks lists, but the original's, which SQLite always keeps.
  const lockList = async (d: Daemon) =>
    ((await (await d.get("/locks", json)).json()) as { lock: string }[])
      .map((l) => l.lock)
      .filter((l) => l !== "default");
  const answerOf = async (res: Response) => ({
    body: await res.text(),
    status: res.status,
    reason: res.headers.get("x-reason") ?? "",
  });

  test("a lock whose release stopped is forgotten: starting and stopping many names leaves room for new ones, also after a restart", async () => {
    // RS_MAX_LOCKS 6 and two limited tokens: each may hold 6 / (2 + 1) = 2 names; staging uses 8 in turn.
    const env = { RS_DB: await freshDb(), RS_CONFIG: team, RS_MAX_LOCKS: "6" };
    let d = await daemon(env);
    for (let i = 1; i <= 8; i++) {
      expect(await d.body(`/locks/staging/junk${i}/start?name=pipeline`, as(STAGE))).toBe("1\n");
      expect(await d.body(`/locks/staging/junk${i}/stop`, as(STAGE))).toBe("1\n");
    }
    expect(await d.body("/locks/prod/eu/start?name=deploy", as(PROD))).toBe("1\n");
    await d.stop();
    d = await daemon(env);
    expect(await d.body("/locks/prod/us/start?name=deploy", as(PROD))).toBe("1\n");
  });

  test("a token limited to some locks holds at most its share of RS_MAX_LOCKS under them; the others keep theirs", async () => {
    // RS_MAX_LOCKS 6 and two limited tokens: each may hold 6 / (2 + 1) = 2 names.
    const env = { RS_DB: await freshDb(), RS_CONFIG: team, RS_MAX_LOCKS: "6" };
    let d = await daemon(env);
    expect(await d.body("/locks/staging/a/start", as(STAGE))).toBe("1\n");
    expect(await d.body("/locks/staging/b/block", as(STAGE))).toBe("1\n");
    const third = await answerOf(await d.get("/locks/staging/c/start", as(STAGE)));
    expect(third).toMatchObject({ body: "0\n", status: 400 });
    expect(third.reason).toContain("stage's token may hold under staging (2, its share of RS_MAX_LOCKS)");
    expect(third.reason).toContain("end a release or block there first");
    expect(await lockList(d)).toEqual(["staging", "staging/a", "staging/b"]); // staging: their group, not stored
    expect(await d.body("/locks/prod/eu/start", as(PROD))).toBe("1\n");
    expect(await d.body("/locks/prod/us/block", as(PROD))).toBe("1\n");
    await d.stop();
    d = await daemon(env); // counted from what is stored
    expect((await answerOf(await d.get("/locks/staging/c/start", as(STAGE)))).status).toBe(400);
    expect(await d.body("/locks/staging/a/stop", as(STAGE))).toBe("1\n");
    expect(await d.body("/locks/staging/c/start", as(STAGE))).toBe("1\n");
  });

  test("a token's share counts only the names it holds: a narrower token under the same locks cannot use up a wider one's", async () => {
    // RS_MAX_LOCKS 6 and two limited tokens, eu under prod: each may hold 2 names.
    const EU = "eu-token-0123456789abcdef";
    const nested = configFile(
      [
        ["prod", ["prod"], PROD],
        ["eu", ["prod/eu"], EU],
      ]
        .map(
          ([who, locks, token]) =>
            `[[token]]\nwho = "${who}"\ncan = ["release", "block"]\nlocks = ${JSON.stringify(locks)}\nsha256 = "${sha(token as string)}"\n`,
        )
        .join("\n"),
    );
    const d = await daemon({ RS_DB: await freshDb(), RS_CONFIG: nested, RS_MAX_LOCKS: "6" });
    expect(await d.body("/locks/prod/eu/e1/start", as(EU))).toBe("1\n");
    expect(await d.body("/locks/prod/eu/e2/start", as(EU))).toBe("1\n");
    expect((await answerOf(await d.get("/locks/prod/eu/e3/start", as(EU)))).status).toBe(400); // eu's share is used
    // prod's share is its own: prod/us, outside eu's locks, is not made unusable by eu's names under prod.
    expect(await d.body("/locks/prod/us/start", as(PROD))).toBe("1\n");
    expect(await d.body("/locks/prod/ap/start", as(PROD))).toBe("1\n");
    expect((await answerOf(await d.get("/locks/prod/sa/start", as(PROD)))).status).toBe(400);
  });

  test("a forgotten lock's history stays readable", async () => {
    const d = await daemon({ RS_DB: await freshDb() });
    expect(await d.body("/locks/old/start?name=sion")).toBe("1\n");
    expect(await d.body("/locks/old/stop?name=sion")).toBe("1\n");
    expect(await lockList(d)).toEqual([]);
    const { events } = await (await d.get("/locks/old/history", json)).json();
    expect(events.map((e: { kind: string; name: string }) => `${e.kind} ${e.name}`)).toEqual([
      "stopped sion",
      "started sion",
    ]);
    expect(await d.body("/locks/old/status")).toBe("idle: no release is running on old\n");
  });
});
