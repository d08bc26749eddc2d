// The words that describe outcomes: releases, blocks and events as people read them, in
// refusals, the log, the history and webhooks. Kept apart from the rules (release.ts), which
// decide, so that a new way of saying something touches only this file.
import { DEFAULT_LOCK, ROOT } from "./names.ts";
import type { Block, Event, Release, State } from "./release.ts";

export const UNKNOWN_USER = "an unknown user";

export const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

/** A length of time as status and messages say it: "45s", "12m 5s", "2h 3m". */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

const who = (name: string): string => name || UNKNOWN_USER;
// A name, and whose token it came with when that is someone else: "sion (token of ana)", "sion (with RS_TOKEN)".
const whoBy = (name: string, by: string | undefined): string =>
  differs(name, by) ? `${who(name)} (${by === PLAIN_TOKEN ? "with RS_TOKEN" : `token of ${by}`})` : who(name);
const differs = (name: string, by: string | undefined): by is string => by !== undefined && by !== name;
const byWords = (by: string) => (by === PLAIN_TOKEN ? "with RS_TOKEN" : `by ${by}`);
/** What `by` says for a change made with RS_TOKEN (no named token may take this name). */
export const PLAIN_TOKEN = "token";

// A release or block never changes once made, so its words are worked out once:
// a refused start, the commonest request, then costs no date formatting.
const described = new WeakMap<Release | Block, string>();
const once = <T extends Release | Block>(x: T, words: (x: T) => string): string => {
  const known = described.get(x);
  if (known !== undefined) return known;
  const d = words(x);
  described.set(x, d);
  return d;
};

// The original's lock and the root need no naming: with one lock, the words are exactly as they were.
export const on = (lock: string) => (lock === DEFAULT_LOCK || lock === ROOT ? "" : ` on ${lock}`);
// A release of several locks names them all: " on prod/eu, shared-db".
const onAll = (lock: string, locks: string[] | undefined) => (locks ? ` on ${locks.join(", ")}` : on(lock));

export const describeRelease = (r: Release, lock: string = DEFAULT_LOCK): string =>
  once(
    r,
    () =>
      `release #${r.id} by ${who(r.name)}${ofVersion(r.version)}${r.reason ? ` (${r.reason})` : ""}${onAll(lock, r.locks)}${startedBy(r.name, r.by)} running since ${iso(r.startedAt)}`,
  );

// ", version v2.4.1" when the start named its build.
const ofVersion = (version: string | undefined) => (version === undefined ? "" : `, version ${version}`);

/** A waiter as status lists it: "ana, version v2.4.1, urgent: hotfix". */
export const describeWaiter = (w: { name: string; version?: string; urgent?: string }): string =>
  `${who(w.name)}${ofVersion(w.version)}${w.urgent === undefined ? "" : `, urgent: ${w.urgent}`}`;

/** Why a waiter was superseded: "superseded by v2.4.1 from ana, who now waits in your place". */
export const describeSupersededBy = (w: { name: string; version?: string }, what: string): string =>
  `superseded by ${w.version ?? "a newer start"} from ${who(w.name)}, who ${what}`;

/** Why a start is stale: "v2.3.9 is older than v2.4.0, released 2026-12-04T09:12:00Z by ana on prod". */
export const describeStale = (version: string, newer: { version: string; at: number; name: string }, lock: string) =>
  `${version} is older than ${newer.version}, released ${iso(newer.at)} by ${who(newer.name)}${on(lock)}: send a newer version, or override=REASON to roll back`;

/** A lock with a limit whose every slot is taken: "staging/devices holds 3 of 3: release #41 by …; release #42 by …". */
export const describeFull = (releases: Release[], limit: number, lock: string): string =>
  `${lock} holds ${releases.length} of ${limit}: ${releases.map((r) => describeRelease(r, lock)).join("; ")}`;

/** What holds a lock now, in words: for a wrong id, the releases that are running instead. */
export const describeHolders = (s: State): string => {
  if (!s.release) return `no release is running${on(s.lock)}`;
  if (s.releases.length === 1) return describeRelease(s.release, s.lock);
  return describeFull(s.releases, s.limit, s.lock);
};

// "release #42 by sion, started by ana": said when a token of one person started it in another's name.
const startedBy = (name: string, by: string | undefined) => (differs(name, by) ? `, started ${byWords(by)},` : "");

export const describeBlock = (b: Block, lock: string = ROOT): string =>
  once(
    b,
    () =>
      `releasing${on(lock)} blocked by ${whoBy(b.name, b.by)} since ${iso(b.since)}${b.reason ? `: ${b.reason}` : ""}`,
  );

/**
 * What an event alone does not say, looked up when a webhook is sent: how long the release it ended ran,
 * and until when (in the window's own time zone) the freeze it began lasts.
 */
export type Told = { ranForMs?: number; until?: string };

/** An event's sentence with what was looked up for it: "release #42 stopped by sion after 12m 5s". */
export const describeTold = (e: Event, told: Told): string =>
  `${describeEvent(e)}${told.ranForMs === undefined ? "" : ` after ${duration(told.ranForMs)}`}${told.until === undefined ? "" : `, until ${told.until}`}`;

/** One human sentence per event: the log line, and the history's text form. */
export function describeEvent(e: Event): string {
  const n = whoBy(e.name, e.by);
  const what = e.reason ? `: ${e.reason}` : "";
  const where = `${onAll(e.lock, e.locks)}${ofVersion(e.version)}`;
  switch (e.kind) {
    case "started":
      return differs(e.name, e.by)
        ? `release #${e.releaseId}${where} by ${who(e.name)}, started ${byWords(e.by)}${what}`
        : `release #${e.releaseId}${where} started by ${n}${what}`;
    case "stopped":
      return `release #${e.releaseId}${where} stopped by ${n}`;
    case "expired":
      return `release #${e.releaseId}${where} by ${n} expired: its lease ran out`;
    case "renewed":
      return `release #${e.releaseId}${where} lease renewed by ${n}`;
    case "blocked":
      return `releasing${where} blocked by ${n}${what}`;
    case "unblocked":
      return `releasing${where} unblocked by ${n}`;
    case "waiting":
      return `${n} is waiting for the release${where}${what}`;
    case "left-queue":
      return `${n} left the queue${what}`;
    case "abandoned":
      return `release #${e.releaseId}${where} by ${n} abandoned: ${e.reason}`;
    case "frozen":
      return `releasing${where} frozen by the calendar: ${e.reason}`;
    case "thawed":
      return `releasing${where} thawed: the freeze ended (${e.reason})`;
    case "long-running":
      return `release #${e.releaseId}${where} by ${n} is still running: ${e.reason}`;
    case "overridden":
      return `release #${e.releaseId}${where} overrode a freeze, by ${n}: ${e.reason}`;
    case "superseded":
      return `${n}${where} left the queue, ${e.reason}`;
  }
}
