// What a lock looks like to a reader: /status and /locks as JSON and text,
// events as JSON, and the live event streams of /events.
import { describeLocalTime } from "../calendar.ts";
import type { Engine, Snapshot } from "../engine.ts";
import { calendarOf, freezeJson, freezeWindows, frozenAt } from "../freezes.ts";
import { estimate } from "../metrics.ts";
import {
  blockOn,
  DEFAULT_LOCK,
  type Event,
  overlaps,
  type Release,
  ROOT,
  releaseAround,
  releaseOn,
  type State,
} from "../release.ts";
import { reachOf } from "../store/store.ts";
import { runOf } from "../trust.ts";
import {
  describeBlock,
  describeEvent,
  describeFull,
  describeRelease,
  describeWaiter,
  duration,
  iso,
  on,
} from "../words.ts";

/**
 * What the views show of the configuration besides the locks, asked at each read (a reload may change it): whether
 * the page must ask for the token before the first change, the page's words for the locks the configuration
 * declares ([[lock]] description), the locks whose declared children make a pool (NAME/*), the locks it names
 * (RS_LOCKS, [[lock]]), and whether a start may be asked of a lock at all (RS_LOCKS may leave it out).
 */
export type Board = {
  tokenRequired: () => boolean;
  describe: (lock: string) => string;
  pools: () => string[];
  named: () => string[];
  allowed: (lock: string) => boolean;
};

const releaseJson = (release: Release) => ({
  id: release.id,
  name: release.name,
  reason: release.reason,
  startedAt: iso(release.startedAt),
  expiresAt: release.expiresAt === null ? null : iso(release.expiresAt),
  ...byOf(release.by),
  ...(release.locks ? { locks: release.locks } : {}), // a release of several locks names them all
  ...(release.version === undefined ? {} : { version: release.version }),
});

/** What keeps a start on a lock from being granted now: the word a script tests, and the words a person reads. */
export type Stop = { why: "running" | "full" | "blocked" | "frozen" | "held" | "queued"; message: string };

/**
 * Everything that stops a start on this lock now, each said once, in the order the rules refuse for them
 * (release.ts `start`), so the first is what a start is told: its own release (a lock with a limit only
 * once every slot is taken), a release above or below it, a block on it or above, a freeze. Empty when a
 * start would be granted (but for a line of waiters, said apart).
 */
export function stoppedBy(lock: string, s: State, now: number): Stop[] {
  const stops: Stop[] = [];
  if (s.release && s.releases.length >= s.limit)
    stops.push(
      s.limit === 1
        ? { why: "running", message: describeRelease(s.release, lock) }
        : { why: "full", message: describeFull(s.releases, s.limit, lock) },
    );
  const around = releaseAround(s);
  if (around) stops.push({ why: "held", message: describeRelease(around.release, around.lock) });
  const blocked = blockOn(s);
  if (blocked) stops.push({ why: "blocked", message: describeBlock(blocked.block, blocked.lock) });
  const frozen = frozenAt(lock, now);
  if (frozen) stops.push({ why: "frozen", message: frozen.message });
  return stops;
}

// The calendar, for a lock: the freeze in force and the next one (absent without windows).
function freezesOf(lock: string) {
  if (freezeWindows().length === 0) return { freeze: null, nextFreeze: null };
  const { now, next } = calendarOf(lock, Date.now());
  return { freeze: now && freezeJson(now), nextFreeze: next && freezeJson(next) };
}

const VERDICT = /^(running|blocked|frozen|held|queued|idle): /;
const topOf = (lock: string) => lock.split("/")[0] as string;
// The root as /locks and the metrics name it (its name is empty).
const ROOT_NAME = "/";

export const eventJson = (e: Event) => ({
  lock: e.lock,
  at: iso(e.at),
  kind: e.kind,
  releaseId: e.releaseId,
  name: e.name,
  reason: e.reason,
  ...byOf(e.by),
  ...(e.locks ? { locks: e.locks } : {}),
  ...(e.version === undefined ? {} : { version: e.version }),
  message: describeEvent(e),
});

/** `by` when a token made it, and `run`, the CI run's link, when a CI job's ID token did. */
export function byOf(by: string | undefined): { by?: string; run?: string } {
  if (by === undefined) return {};
  const run = runOf(by);
  return run ? { by, run } : { by };
}

// ---- live events ----

type EventStream = { controller: ReadableStreamDefaultController<Uint8Array>; lock: string | undefined };
const eventStreams = new Set<EventStream>();
const encoder = new TextEncoder();

/**
 * The most a stream may have waiting to be sent. A client that lets this much pile up is not reading (or
 * reads far slower than changes come): its stream is closed, which frees what it held, and it reconnects
 * for a fresh snapshot. A browser that reads keeps well under it.
 */
export const MAX_UNSENT_BYTES = 64 * 1024;

/** How many event streams are open now. */
export const openStreams = (): number => eventStreams.size;

const sse = (event: string, data: unknown, prefix = "") =>
  encoder.encode(`${prefix}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);

/**
 * Whether a stream for `lock` (every lock when undefined) hears of an event: one on the lock, below it, or
 * above it (a block above blocks it; a release above keeps it from starting).
 */
// A stream on a lock hears of what happens on it, above or below it: on any lock of a release that holds several.
const hears = (lock: string | undefined, e: Event) =>
  lock === undefined || (e.locks ?? [e.lock]).some((l) => overlaps(lock, l));

function send(stream: EventStream, frame: Uint8Array) {
  try {
    stream.controller.enqueue(frame);
    if ((stream.controller.desiredSize ?? 0) < 0) cut(stream);
  } catch {
    eventStreams.delete(stream); // the client went away
  }
}

// A stream whose state cannot be read ends: the client connects again (after `retry`) and is sent a status
// read then, rather than one that is not current.
function end(stream: EventStream) {
  eventStreams.delete(stream);
  try {
    stream.controller.close();
  } catch {}
}

// Ends a stream whose client does not read: what is queued is dropped at once (closing would wait for the
// client to read it), and the connection is closed.
function cut(stream: EventStream) {
  eventStreams.delete(stream);
  stream.controller.error(new Error(`the client did not read ${MAX_UNSENT_BYTES} bytes of events`));
}

/** A comment now and then keeps proxies from closing idle streams. */
export function keepStreamsAlive(): void {
  const frame = encoder.encode(": keep-alive\n\n");
  for (const stream of eventStreams) send(stream, frame);
}

/** At shutdown: end every event stream, so that the server can finish. */
export function closeEventStreams(): void {
  for (const stream of eventStreams) {
    try {
      stream.controller.close();
    } catch {}
  }
  eventStreams.clear();
}

/**
 * The views of one engine: each status, listing and stream is rendered from that engine's snapshots and line,
 * with the board's words for the configuration.
 */
export function viewsOf(engine: Engine, board: Board) {
  const { childrenOf, health, snapshot, storeDescription, waiting, waitingAround } = engine;
  const { tokenRequired, describe: descriptionOf, pools } = board;
  /**
   * Everything that stops a start on `lock` (see stoppedBy) and, when nothing else does, the waiters whose claims
   * overlap it (on it, above it, below it, or a claim of several locks): they are served first, and a start is
   * refused `queued` behind them, so such a lock is not idle.
   */
  function stopsOn(lock: string, s: State, now: number): Stop[] {
    const stops = stoppedBy(lock, s, now);
    if (stops.length > 0) return stops;
    const ahead = waitingAround(lock);
    if (ahead.length === 0) return stops;
    const each = ahead.map((w) => `${describeWaiter(w)} for ${reachOf(w).join(" and ")}`);
    return [{ why: "queued", message: `${ahead.length} waiting ahead of a start${on(lock)}: ${each.join(", ")}` }];
  }

  /** A lock's status, from one snapshot (see engine.ts `snapshot`): never pieced together from several reads. */
  function statusJson(lock: string, snap: Snapshot) {
    const s = snap.state(lock);
    const { release } = s;
    const blocked = blockOn(s);
    const holding = release ? null : releaseOn(s); // a release above or below that keeps this lock from starting
    const h = health();
    const description = descriptionOf(lock);
    return {
      lock,
      known: h.known,
      running: release !== null,
      blocked: blocked !== null,
      // `release` is kept for locks whose limit is 1, so consumers written before limits keep working.
      ...(s.limit === 1 ? { release: release && releaseJson(release) } : {}),
      releases: s.releases.map(releaseJson),
      limit: s.limit,
      ...(description ? { description } : {}),
      ...membersOf(lock, snap),
      block: blocked && {
        name: blocked.block.name,
        reason: blocked.block.reason,
        since: iso(blocked.block.since),
        ...byOf(blocked.block.by),
        ...(blocked.lock === lock ? {} : { on: blocked.lock }), // a block from above says where it is
      },
      ...(holding ? { heldBy: { lock: holding.lock, id: holding.release.id, name: holding.release.name } } : {}),
      queue: waiting(lock).map((w) => ({
        name: w.name,
        reason: w.reason,
        since: iso(w.since),
        ...byOf(w.by),
        ...(w.version === undefined ? {} : { version: w.version }),
        ...(w.urgent === undefined ? {} : { urgent: w.urgent }),
      })),
      stoppedBy: stopsOn(lock, s, Date.now()),
      lastReleaseId: s.lastId,
      estimate: estimate(release),
      ...freezesOf(lock),
      tokenRequired: tokenRequired(),
      healthy: h.ok,
      store: storeDescription(),
    };
  }

  // A lock whose declared children make a pool: each member, and the release holding it (absent for others).
  function membersOf(lock: string, snap: Snapshot) {
    const members = childrenOf(lock);
    if (members.length === 0) return {};
    return {
      members: members.map((member) => {
        const [held] = snap.state(member).releases;
        return { lock: member, release: held ? releaseJson(held) : null };
      }),
    };
  }

  /**
   * The status in lines a script can grep: the first says what stops a start. A lock a release holds begins
   * `running:` (as the original's did), then what else stops a start; any other lock lists what stops it
   * (`held:` by a release above or below, `blocked:`, `frozen:`, `queued:` behind waiters of overlapping claims)
   * before `idle:`, so `^idle` means it is free.
   */
  function statusText(lock: string, snap: Snapshot): string {
    const now = Date.now();
    const s = snap.state(lock);
    const { release } = s;
    const running = (r: Release) =>
      `${describeRelease(r, lock)}, for ${duration(now - r.startedAt)}${r.expiresAt === null ? "" : `; lease ends ${iso(r.expiresAt)}`}`;
    const others = stopsOn(lock, s, now)
      .filter((stop) => stop.why !== "running" && stop.why !== "full") // its own releases are the running: line
      .map((stop) => `${stop.why}: ${stop.message}`);
    const lines = !release
      ? others.length > 0
        ? others // idle: only when a start would be granted, so a script's ^idle never matches a lock it cannot start
        : [`idle: no release is running${on(lock)}`]
      : s.limit === 1
        ? [`running: ${running(release)}`, ...others]
        : [`running: ${s.releases.length} of ${s.limit}: ${s.releases.map(running).join("; ")}`, ...others];
    const usually = estimate(release);
    if (usually)
      lines.push(
        `usually: takes ${duration(usually.typicalSeconds * 1000)}, expected to end around ${usually.expectedAt}`,
      );
    const { next } = calendarOf(lock, now);
    if (next)
      lines.push(
        `next freeze: ${next.reason}, from ${describeLocalTime(next.from, next.window.timezone, now)} until ${describeLocalTime(next.until, next.window.timezone, now)}`,
      );
    const line = waiting(lock);
    if (line.length)
      lines.push(`waiting: ${line.map((w, i) => `${i + 1}. ${describeWaiter(w)} since ${iso(w.since)}`).join(", ")}`);
    return `${lines.join("\n")}\n`;
  }

  /**
   * Every lock a start may be asked of that is held, blocked, waited for, has history, is named by the
   * configuration or frozen by a window, with the top lock of each (the board groups by it, and it is a lock of its
   * own: one held from below must say so), in tree order. With RS_LOCKS, only the locks it allows.
   */
  function lockNames(snap: Snapshot): string[] {
    const names = new Set([...snap.locks(), ...board.named()]);
    for (const w of waiting()) for (const lock of reachOf(w)) names.add(lock);
    for (const w of freezeWindows()) for (const lock of w.locks ?? []) names.add(lock); // a frozen lock shows before it is used
    for (const lock of [...names]) names.add(topOf(lock));
    names.delete(ROOT);
    const allowed = [...names].filter(board.allowed);
    return [...new Set([...allowed, ...pools().filter(board.allowed)])].sort(); // a pool shows before it is used
  }

  /**
   * One line per lock, what /locks says in text, in the words of its status (see statusText): `WORD: LOCK: what`,
   * WORD being the first word of /locks/LOCK/status (`running`, `held`, `blocked`, `frozen` or `idle`), then every
   * other thing that stops a start there, joined with "; ". So `grep '^idle:'` means a start would be granted on
   * both. A block of the root, which blocks every lock, comes first as the lock `/`.
   */
  function locksText(snap: Snapshot): string {
    const root = snap.state(ROOT).block;
    const head = root ? `blocked: ${ROOT_NAME}: ${describeBlock(root, ROOT)}\n` : "";
    const line = (lock: string) =>
      statusText(lock, snap)
        .split("\n")
        .filter((l) => VERDICT.test(l))
        .join("; ")
        .replace(VERDICT, (word) => `${word}${lock}: `);
    return (
      head +
      lockNames(snap)
        .map((lock) => `${line(lock)}\n`)
        .join("")
    );
  }

  /** A Server-Sent Events stream: a snapshot on connect, then one event per change that concerns `lock`. */
  function eventStream(lock: string | undefined): ReadableStream<Uint8Array> {
    let stream: EventStream | null = null;
    return new ReadableStream<Uint8Array>(
      {
        start(controller) {
          const opened: EventStream = { controller, lock };
          stream = opened;
          eventStreams.add(opened);
          inTurn(lock ?? DEFAULT_LOCK, [opened], (snap) =>
            send(opened, sse("status", { status: statusJson(lock ?? DEFAULT_LOCK, snap) }, "retry: 1000\n")),
          );
        },
        cancel() {
          if (stream) eventStreams.delete(stream);
        },
      },
      // Counted in bytes, so that desiredSize says how far the unsent part is past MAX_UNSENT_BYTES.
      { highWaterMark: MAX_UNSENT_BYTES, size: (chunk) => chunk?.byteLength ?? 0 },
    );
  }

  // Frames go out in the order their changes were heard. On a shared store each status is rendered from a
  // read of its own (sent at once, used in turn); on the others from memory, at once.
  let frames: Promise<void> = Promise.resolve();
  function inTurn(lock: string, streams: EventStream[], render: (snap: Snapshot) => void): void {
    const snap = snapshot(lock);
    if (snap instanceof Promise)
      frames = frames.then(() =>
        snap.then(render, () => {
          for (const stream of streams) end(stream);
        }),
      );
    else render(snap);
  }

  /** Sends a change to every open stream it concerns (also changes made through other replicas). */
  function broadcastChange(events: Event[]): void {
    if (eventStreams.size === 0) return; // nothing is built for nobody
    const concerned: { stream: EventStream; heard: Event[] }[] = [];
    for (const stream of eventStreams) {
      const heard = events.filter((e) => hears(stream.lock, e));
      if (heard.length) concerned.push({ stream, heard });
    }
    if (concerned.length === 0) return;
    // Every stream's status from one snapshot of every lock.
    inTurn(
      ROOT,
      concerned.map((c) => c.stream),
      (snap) => {
        for (const { stream, heard } of concerned)
          send(
            stream,
            sse("change", { events: heard.map(eventJson), status: statusJson(stream.lock ?? DEFAULT_LOCK, snap) }),
          );
      },
    );
  }

  return { statusJson, statusText, lockNames, locksText, eventStream, broadcastChange };
}

/** The views of one engine: what viewsOf gives. */
export type Views = ReturnType<typeof viewsOf>;
