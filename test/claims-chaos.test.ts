// Claims under fire, against the compiled binary on SQLite: concurrent clients ask for overlapping claims of
// several locks and pools, some give up mid-wait, and the daemon is killed (kill -9) and restarted twice.
// Every answer is recorded; from the answers and from the history in the database, no two releases ever
// held conflicting locks at once, and no waiter was granted while an earlier overlapping waiter still waited.
import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { configFile, type Daemon, daemonsPerTest, tempDir } from "./daemon.ts";

const daemon = daemonsPerTest();

/** The same random choices on every run: a sequence that finds a hole finds it again. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

const CHILDREN: Record<string, string[]> = { phones: ["phones/a", "phones/b"] };
const CONFIG = '[[lock]]\nname = "phones/a"\n\n[[lock]]\nname = "phones/b"\n';
// Overlapping on purpose: prod with prod/eu, shared-db in three, the pool with its own children.
const SHAPES = [
  ["prod/eu", "shared-db"],
  ["prod"],
  ["shared-db", "phones/*"],
  ["phones/*"],
  ["prod/us", "phones/a"],
  ["staging", "shared-db"],
  ["prod/eu"],
];
const CLIENTS = 12;
const RUN_MS = 24_000;
const KILLS_AT = [7_000, 15_000]; // from the start of the run

const reachOf = (claim: string[]) => claim.flatMap((l) => (l.endsWith("/*") ? (CHILDREN[l.slice(0, -2)] ?? []) : [l]));
const overlap = (a: string[], b: string[]) =>
  a.some((x) => b.some((y) => x === y || y.startsWith(`${x}/`) || x.startsWith(`${y}/`)));
const query = (claim: string[]) => claim.map((l) => `lock=${encodeURIComponent(l)}`).join("&");

/** A grant as its client heard it: from when the answer came to when the stop was sent, it surely held its locks. */
type Held = {
  id: number;
  name: string;
  locks: string[];
  heardAt: number;
  stopSentAt: number | null;
  stopped: string;
  stopCut: boolean; // a stop was sent and its answer lost (the daemon killed): it may have ended the release already
};

describe("concurrent claims with disconnects and kill -9", () => {
  test("no two releases hold conflicting locks at once, and no waiter passes an earlier overlapping one", async () => {
    const db = join(tempDir(), "state.db");
    const env = { RS_DB: db, RS_CONFIG: configFile(CONFIG), RS_MAX_WAIT: "60" };
    let d: Daemon = await daemon(env);
    const port = d.port;
    const claimOf = new Map<string, string[]>(); // by the name each attempt sent
    const held: Held[] = [];
    const answers = { granted: 0, refused: 0, cut: 0, gaveUp: 0 };
    const kills: number[] = []; // when each daemon was killed: its waiters were lost with it
    const began = Date.now();
    let running = true;

    const client = async (c: number) => {
      const random = seeded(c + 1);
      for (let k = 0; running; k++) {
        const claim = SHAPES[Math.floor(random() * SHAPES.length)] as string[];
        const name = `c${c}-${k}`;
        claimOf.set(name, claim);
        const giveUp = random() < 0.2 ? new AbortController() : null; // this one disconnects mid-wait
        if (giveUp) setTimeout(() => giveUp.abort(), 50 + random() * 400);
        let res: Response;
        try {
          res = await fetch(`${d.url}/start?${query(claim)}&name=${name}&wait=5&ttl=8`, { signal: giveUp?.signal });
          if ((await res.text()) !== "1\n") {
            answers.refused++;
            continue;
          }
        } catch {
          if (giveUp?.signal.aborted) answers.gaveUp++;
          else {
            answers.cut++; // the daemon was killed: the outcome is unknown, a lease bounds it
            await Bun.sleep(100);
          }
          continue;
        }
        answers.granted++;
        const grant: Held = {
          id: Number(res.headers.get("x-release-id")),
          name,
          locks: (res.headers.get("x-lock") ?? "").split(","),
          heardAt: Date.now(),
          stopSentAt: null,
          stopped: "",
          stopCut: false,
        };
        held.push(grant);
        await Bun.sleep(random() * 150); // the deploy
        // Stopped by id on its last lock: the whole release ends. Tried again while the daemon restarts.
        for (let tries = 0; tries < 100 && grant.stopped === ""; tries++) {
          grant.stopSentAt ??= Date.now();
          try {
            grant.stopped = await (await fetch(`${d.url}/locks/${grant.locks.at(-1)}/stop?id=${grant.id}`)).text();
          } catch {
            grant.stopCut = true;
            await Bun.sleep(100);
          }
        }
      }
    };

    const clients = Array.from({ length: CLIENTS }, (_, c) => client(c));
    for (const at of KILLS_AT) {
      await Bun.sleep(Math.max(0, began + at - Date.now()));
      kills.push(Date.now());
      await d.stop("SIGKILL");
      d = await daemon(env, { port });
    }
    await Bun.sleep(Math.max(0, began + RUN_MS - Date.now()));
    running = false;
    await Promise.all(clients);
    await d.stop("SIGTERM");

    // Enough happened to mean something: grants, refusals, disconnects and requests cut by the kills.
    expect(answers.granted).toBeGreaterThan(50);
    expect(answers.gaveUp).toBeGreaterThan(0);

    // From the answers: what each client surely held, from hearing its grant to sending its stop.
    const clashes: string[] = [];
    for (const [i, a] of held.entries())
      for (const b of held.slice(i + 1)) {
        if (!overlap(a.locks, b.locks)) continue;
        const aEnd = a.stopSentAt ?? Number.POSITIVE_INFINITY;
        const bEnd = b.stopSentAt ?? Number.POSITIVE_INFINITY;
        if (a.heardAt < bEnd && b.heardAt < aEnd) clashes.push(`#${a.id} ${a.locks} and #${b.id} ${b.locks}`);
      }
    expect(clashes).toEqual([]);
    // A stop answers 1, unless an earlier try of it was cut by a kill (it may have ended the release), or its lease
    // (ttl=8) could have run out before it was sent (a daemon that was down meanwhile).
    const unexplained = held.filter(
      (h) => h.stopped !== "1\n" && !h.stopCut && (h.stopSentAt ?? 0) - h.heardAt < 8_000,
    );
    expect(unexplained.map((h) => `#${h.id}: ${h.stopped}`)).toEqual([]);

    // From the history, in the order it was written: replayed, no grant conflicts with what is held, and
    // none passes a waiter ahead of it whose claim overlaps its own.
    const raw = new Database(db, { readonly: true });
    const events = raw
      .query<
        { at: number; kind: string; release_id: number | null; name: string; lock: string; locks: string | null },
        []
      >("SELECT at, kind, release_id, name, lock, locks FROM events ORDER BY seq")
      .all();
    raw.close();
    const holding = new Map<number, string[]>();
    let line: string[] = [];
    let restarts = 0;
    const problems: string[] = [];
    for (const e of events) {
      // A killed daemon's waiters went with it, unrecorded.
      while (restarts < kills.length && e.at >= (kills[restarts] as number)) {
        line = [];
        restarts++;
      }
      const locks = e.locks ? (JSON.parse(e.locks) as string[]) : [e.lock];
      if (e.kind === "waiting") line.push(e.name);
      if (e.kind === "left-queue") line = line.filter((n) => n !== e.name);
      if (e.kind === "started" && e.release_id !== null) {
        for (const [id, other] of holding)
          if (overlap(other, locks)) problems.push(`#${e.release_id} on ${locks} while #${id} held ${other}`);
        holding.set(e.release_id, locks);
        const mine = reachOf(claimOf.get(e.name) ?? locks);
        const place = line.indexOf(e.name);
        const ahead = place < 0 ? line : line.slice(0, place);
        for (const w of ahead)
          if (overlap(reachOf(claimOf.get(w) ?? []), mine)) problems.push(`${e.name} passed ${w}, still waiting`);
        line = line.filter((n) => n !== e.name);
      }
      if (["stopped", "expired", "abandoned"].includes(e.kind) && e.release_id !== null) holding.delete(e.release_id);
    }
    expect(restarts).toBe(KILLS_AT.length);
    expect(problems).toEqual([]);
  }, 90_000);
});
