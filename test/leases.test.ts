// Leases that end on their own, fencing by release id, and a first-come,
// first-served wait queue, against the compiled binary.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { daemonsPerTest, historyKinds, leasesRanOutWhileDown, statusOf, tempDir, until } from "./daemon.ts";

const daemon = daemonsPerTest();
const status = statusOf;
const kinds = historyKinds;

describe("leases", () => {
  test("a release with ttl= expires on its own, is logged and recorded as expired", async () => {
    const d = await daemon();
    // The lease as granted, from the answer itself: a status asked for afterwards may come after it ran out.
    const granted = await (await d.get("/start?name=sion&ttl=1&format=json")).json();
    expect(granted.ok).toBe(true);
    const { release } = granted.status;
    expect(Date.parse(release.expiresAt) - Date.parse(release.startedAt)).toBe(1000);
    await until(async () => !(await status(d)).running, "the lease to run out");
    expect(await kinds(d)).toEqual(["expired", "started"]);
    await until(async () => /release #1 by sion expired: its lease ran out/.test(d.output()), "the expiry logged");
    expect(await d.body("/start")).toBe("1\n");
  });

  test("RS_TTL is the lease of a start without ttl=", async () => {
    const d = await daemon({ RS_TTL: "90" });
    await d.body("/start");
    const s = await status(d);
    expect(Date.parse(s.release.expiresAt) - Date.parse(s.release.startedAt)).toBe(90_000);
  });

  test("without ttl= or RS_TTL a release never expires", async () => {
    const d = await daemon();
    await d.body("/start");
    expect((await status(d)).release.expiresAt).toBeNull();
  });

  test("a lease survives a restart with its expiry intact", async () => {
    const db = join(tempDir(), "lease.db");
    const first = await daemon({ RS_DB: db });
    await first.body("/start?name=sion&ttl=600");
    const before = (await status(first)).release;
    await first.stop();
    const second = await daemon({ RS_DB: db });
    expect((await status(second)).release).toEqual(before);
  });

  test("a lease that ran out while the daemon was down has ended when it comes back", async () => {
    const db = join(tempDir(), "lease.db");
    const first = await daemon({ RS_DB: db });
    expect(await first.body("/start?name=sion&ttl=600")).toBe("1\n");
    await first.stop();
    leasesRanOutWhileDown(db);
    const second = await daemon({ RS_DB: db });
    expect((await status(second)).running).toBe(false);
    expect((await kinds(second))[0]).toBe("expired");
  });

  test("/renew extends the lease of the right id only", async () => {
    const d = await daemon();
    const id = (await d.get("/start?ttl=5")).headers.get("x-release-id");
    const before = Date.parse((await status(d)).release.expiresAt);
    expect(await d.body(`/renew?id=${id}&ttl=600`)).toBe("1\n");
    expect(Date.parse((await status(d)).release.expiresAt)).toBeGreaterThan(before + 500_000);
    const wrong = await d.get(`/renew?id=${Number(id) + 1}&ttl=600`);
    expect(await wrong.text()).toBe("0\n");
    expect(wrong.headers.get("x-reason-code")).toBe("wrong-id");
  });
});

describe("fencing", () => {
  test("/stop?id= stops only that release", async () => {
    const d = await daemon();
    const id = (await d.get("/start")).headers.get("x-release-id");
    const wrong = await d.get(`/stop?id=${Number(id) + 5}`);
    expect(await wrong.text()).toBe("0\n");
    expect(wrong.headers.get("x-reason-code")).toBe("wrong-id");
    expect((await status(d)).running).toBe(true);
    expect(await d.body(`/stop?id=${id}`)).toBe("1\n");
  });

  test("a stale /stop?id= after expiry and a new start leaves the new release running", async () => {
    const d = await daemon();
    const old = (await d.get("/start?name=old&ttl=1")).headers.get("x-release-id");
    await until(async () => !(await status(d)).running, "the old lease to run out");
    await d.body("/start?name=new");
    const stale = await d.get(`/stop?id=${old}`);
    expect(stale.headers.get("x-reason-code")).toBe("wrong-id");
    expect((await status(d)).release.name).toBe("new");
  });
});

describe("waiting", () => {
  test("ten waiters are served in arrival order, skipping one that disconnected", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    const served: string[] = [];
    const answers: Promise<void>[] = [];
    const quitter = new AbortController();
    for (let i = 0; i < 10; i++) {
      const name = `w${i}`;
      const signal = i === 3 ? quitter.signal : undefined;
      answers.push(
        d
          .get(`/start?name=${name}&wait=60`, { signal })
          .then(async (r) => {
            if ((await r.text()) === "1\n") served.push(name);
          })
          .catch(() => {}),
      );
      await until(async () => (await status(d)).queue.length === i + 1, `${name} to join the queue`);
    }
    quitter.abort();
    await until(async () => (await status(d)).queue.length === 9, "w3 to leave the queue");
    expect((await status(d)).queue.map((w: { name: string }) => w.name)).toEqual([
      "w0",
      "w1",
      "w2",
      "w4",
      "w5",
      "w6",
      "w7",
      "w8",
      "w9",
    ]);

    // A newcomer that will not wait is refused while others wait.
    expect(await d.body("/start?name=newcomer")).toBe("0\n");
    for (let i = 0; i < 9; i++) {
      expect(await d.body("/stop")).toBe("1\n");
      await until(async () => served.length === i + 1, "the next waiter to be served");
    }
    await Promise.all(answers);
    expect(served).toEqual(["w0", "w1", "w2", "w4", "w5", "w6", "w7", "w8", "w9"]);
    expect(await kinds(d)).toContain("left-queue");
  });

  test("the waiter gets the release in the same step as the stop, with its own id", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    const waiter = d.get("/start?name=next&wait=30");
    await until(async () => (await status(d)).queue.length === 1, "the waiter to queue");
    await d.body("/stop");
    const res = await waiter;
    expect(await res.text()).toBe("1\n");
    expect(res.headers.get("x-release-id")).toBe("2");
    expect((await status(d)).release.name).toBe("next");
  });

  test("unblocking serves the first waiter", async () => {
    const d = await daemon();
    await d.body("/block");
    const waiter = d.body("/start?name=patient&wait=30");
    await until(async () => (await status(d)).queue.length === 1, "the waiter to queue");
    expect(await d.body("/status")).toContain("waiting: 1. patient since");
    await d.body("/unblock");
    expect(await waiter).toBe("1\n");
  });

  test("an expiring lease serves the first waiter", async () => {
    const d = await daemon();
    const id = (await d.get("/start?ttl=600")).headers.get("x-release-id");
    const waiter = d.body("/start?name=patient&wait=30");
    await until(async () => (await status(d)).queue.length === 1, "the waiter in line");
    expect(await d.body(`/renew?id=${id}&ttl=1`)).toBe("1\n"); // runs out with the waiter already in line
    expect(await waiter).toBe("1\n");
    expect(await kinds(d)).toEqual(["started", "expired", "renewed", "waiting", "started"]); // newest first
  });

  test("a wait that runs out answers 0 with timeout", async () => {
    const d = await daemon();
    await d.body("/start");
    const res = await d.get("/start?wait=1");
    expect(await res.text()).toBe("0\n");
    expect(res.headers.get("x-reason-code")).toBe("timeout");
    expect((await status(d)).queue).toEqual([]);
  });
});

describe("parameters", () => {
  const cases: [string, string][] = [
    ["/start?ttl=0", "ttl=0"],
    ["/start?ttl=-5", "ttl=-5"],
    ["/start?ttl=ten", "ttl=ten"],
    ["/start?ttl=1.5", "ttl=1.5"],
    ["/start?ttl=99999999", "ttl=99999999"],
    ["/start?wait=-1", "wait=-1"],
    ["/start?wait=abc", "wait=abc"],
    ["/start?wait=3601", "wait=3601"],
    ["/stop?id=0", "id=0"],
    ["/stop?id=x", "id=x"],
    ["/stop?id=-2", "id=-2"],
    ["/renew?ttl=60", "id is required"],
    ["/renew?id=abc&ttl=60", "id=abc"],
    ["/renew?id=1&ttl=0", "ttl=0"],
  ];
  test("each invalid ttl, wait and id is refused with invalid, naming it, and changes nothing", async () => {
    const d = await daemon();
    await d.body("/start?name=holder&ttl=600");
    const before = await status(d);
    for (const [path, named] of cases) {
      const res = await d.get(path);
      expect(res.status).toBe(400);
      expect(res.headers.get("x-reason-code")).toBe("invalid");
      expect(res.headers.get("x-reason")).toContain(named);
      expect(await res.text()).toBe("0\n");
    }
    expect(await status(d)).toEqual(before);
  });

  test("RS_MAX_WAIT bounds wait=", async () => {
    const d = await daemon({ RS_MAX_WAIT: "5" });
    const res = await d.get("/start?wait=6");
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toBe("wait=6 is not valid: expected a whole number from 0 to 5");
  });
});
