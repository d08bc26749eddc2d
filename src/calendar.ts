// The freeze calendar: windows of time during which releasing on some locks is
// frozen, as pure functions of a window and an instant (epoch milliseconds).
// Nothing here reads the clock or does I/O: the daemon passes the time in, so
// the same rules serve start-up checks, requests and tests.
//
// A window has one of three schedules, each read in the window's time zone:
//   every = "Fri 16:00 - Mon 08:00"                       weekly, day and time to day and time
//   from = "2026-12-18 12:00", until = "2027-01-04 08:00" once
//   start = "0 18 L * *", end = "0 9 2 * *"               cron: from a start to the next end
//
// Times are wall-clock times. Across daylight-saving changes a wall time that
// does not exist that day (in the spring gap) means the next minute that does,
// and one the clock shows twice (in the autumn fold) means the first time it
// shows it. An occurrence is in force from its start, inclusive, to its end,
// exclusive: a weekend freeze until Mon 08:00 lets a release start at 08:00.

import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { DEFAULT_LOCK, isAncestor, ROOT } from "./release.ts";

/** A time in the week: day 0 (Sunday) to 6 (Saturday), as Date's getUTCDay numbers them, and minutes after midnight. */
export type WeekTime = { day: number; minute: number };

/** A five-field cron expression, as the sets of values each field allows. */
export type Cron = {
  text: string;
  times: number[]; // the minutes of the day it fires at (hour * 60 + minute), ascending
  days: boolean[]; // day-of-month, indexed 1 to 31
  lastDay: boolean; // `L` in day-of-month: the last day of every month
  months: boolean[]; // indexed 1 to 12
  weekdays: boolean[]; // indexed 0 (Sunday) to 6
  eitherDay: boolean; // both day fields restricted: a day matches either one, as cron does; else both
};

export type Rule =
  | { kind: "weekly"; start: WeekTime; end: WeekTime }
  | { kind: "once"; from: number; until: number } // instants, worked out from the local times at parse
  | { kind: "cron"; start: Cron; end: Cron };

export type Window = {
  reason: string;
  locks: string[] | null; // null: every lock, and the root
  timezone: string; // an IANA name, as Intl spells it
  rule: Rule;
};

/** One stretch of time a window is in force: from ≤ t < until. */
export type Occurrence = { from: number; until: number };

/** A window in force on a lock, and until when. */
export type Freeze = Occurrence & { reason: string; window: Window };

const MINUTE = 60_000;
const DAY = 86_400_000;
export const MAX_REASON = 200;

// A cron is searched day by day, so the search needs a bound. A cron whose
// firing days are further apart than this is refused when it is read, so every
// search that is allowed to find nothing finds nothing only past the bound.
export const CRON_REACH_DAYS = 400;
const CANCELLED_STARTS = 1000; // starts cancelled by an end in a row, at most, before a search gives up
const CHECKED_FROM = Date.UTC(2026, 0, 1); // where a cron window is tried once when read

export const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

// ---------------------------------------------------------------------------
// Reading a [[freeze]] table. Every problem is one sentence that names the key,
// says what was wrong and shows what would do.

class Problem extends Error {}
function fail(message: string): never {
  throw new Problem(message);
}

const KEYS = ["reason", "locks", "timezone", "every", "from", "until", "start", "end"];
const SCHEDULES =
  'every = "Fri 16:00 - Mon 08:00"; from = "2026-12-18 12:00" with until = "2027-01-04 08:00"; or start = "0 18 L * *" with end = "0 9 2 * *" (cron)';

/** The window a [[freeze]] table describes, or the problem with it in words. */
export function parseWindow(raw: Record<string, unknown>): Window | string {
  try {
    for (const key of Object.keys(raw))
      if (!KEYS.includes(key)) fail(`unknown key ${key}: expected one of ${KEYS.join(", ")}`);
    const reason = readReason(raw.reason);
    const locks = readLocks(raw.locks);
    const timezone = readTimezone(raw.timezone);
    return { reason, locks, timezone, rule: readRule(raw, timezone) };
  } catch (e) {
    if (e instanceof Problem) return e.message;
    throw e;
  }
}

function text(key: string, value: unknown, example: string): string {
  // An unquoted TOML date arrives as a Date, not a string: the quotes are the fix.
  if (typeof value !== "string") fail(`${key} must be a string in quotes, e.g. ${key} = ${JSON.stringify(example)}`);
  return value;
}

function readReason(value: unknown): string {
  if (value === undefined) fail('reason is missing: say why releasing is frozen, e.g. reason = "weekend"');
  const reason = text("reason", value, "weekend");
  if (reason.trim() === "") fail('reason is empty: say why releasing is frozen, e.g. reason = "weekend"');
  if (reason.length > MAX_REASON)
    fail(`reason is ${reason.length} characters long: keep it to ${MAX_REASON}, it is shown with every refusal`);
  return reason;
}

function readLocks(value: unknown): string[] | null {
  if (value === undefined || value === "*") return null;
  if (!Array.isArray(value))
    fail('locks must be a list of lock names, e.g. locks = ["prod"], or "*" (the default) for every lock');
  const locks = value as unknown[];
  if (locks.length === 0) fail("locks = [] freezes nothing: name the locks, or leave locks out to freeze every lock");
  for (const lock of locks)
    if (typeof lock !== "string" || !validLockName(lock))
      fail(`locks: ${JSON.stringify(lock)} is not a lock name (${LOCK_NAME_RULE}); "*" alone means every lock`);
  return locks as string[];
}

// Intl knows the zones the runtime's time zone data knows; its spelling is kept, so
// "europe/budapest" reads back as "Europe/Budapest".
function readTimezone(value: unknown): string {
  if (value === undefined) return "UTC";
  const name = text("timezone", value, "Europe/Budapest");
  // Intl also takes offsets ("+01:00"), which know no daylight saving: only names are time zones here.
  if (!/^[A-Za-z][A-Za-z0-9_+-]*(\/[A-Za-z0-9_+-]+)*$/.test(name))
    fail(`timezone = ${JSON.stringify(name)} is not a time zone: expected an IANA name such as "Europe/Budapest"`);
  try {
    return new Intl.DateTimeFormat("en-US", { timeZone: name }).resolvedOptions().timeZone;
  } catch {
    fail(`timezone = ${JSON.stringify(name)} is not a time zone: expected an IANA name such as "Europe/Budapest"`);
  }
}

function readRule(raw: Record<string, unknown>, timezone: string): Rule {
  const given = (key: string) => raw[key] !== undefined;
  const schedules = [
    given("every") && "every",
    (given("from") || given("until")) && "from/until",
    (given("start") || given("end")) && "start/end",
  ].filter((s) => s !== false);
  if (schedules.length === 0) fail(`no schedule: give one of ${SCHEDULES}`);
  if (schedules.length > 1)
    fail(`${schedules.join(" and ")} are both given: a freeze has one schedule, so make each its own [[freeze]]`);
  if (given("every")) return readWeekly(text("every", raw.every, "Fri 16:00 - Mon 08:00"));
  if (given("from") || given("until")) return readOnce(raw, timezone);
  const rule = readCronWindow(raw);
  // Every start falling on an end (e.g. start "0 9 * * 1", end "0 9 * * *") is a window that never begins.
  if (rule.kind === "cron" && cronAfter(rule.start, rule.end, timezone, CHECKED_FROM) === null)
    fail(
      `start = ${JSON.stringify(rule.start.text)} never begins a window: each of its times is also an end time, which cancels it`,
    );
  return rule;
}

// ---- every = "Fri 16:00 - Mon 08:00"

const WEEKLY = /^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\S+)\s+(\d{1,2}):(\d{2})\s*$/;

function readWeekly(value: string): Rule {
  const said = `every = ${JSON.stringify(value)}`;
  const m = WEEKLY.exec(value);
  if (!m) fail(`${said}: expected "DAY HH:MM - DAY HH:MM" with days Mon..Sun, e.g. "Fri 16:00 - Mon 08:00"`);
  const [, day1 = "", h1 = "", m1 = "", day2 = "", h2 = "", m2 = ""] = m;
  const start = { day: weekday(said, day1), minute: timeOfDay(said, h1, m1) };
  const end = { day: weekday(said, day2), minute: timeOfDay(said, h2, m2) };
  if (start.day === end.day && start.minute === end.minute)
    fail(
      `${said}: it starts and ends at the same time, so it would never end: for a freeze with no end, block the lock instead`,
    );
  return { kind: "weekly", start, end };
}

function weekday(said: string, name: string): number {
  const day = DAYS.findIndex((d) => d.toLowerCase() === name.toLowerCase());
  if (day < 0) fail(`${said}: ${JSON.stringify(name)} is not a day: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun`);
  return day;
}

function timeOfDay(said: string, hours: string, minutes: string): number {
  const h = Number(hours);
  const m = Number(minutes);
  if (h > 23 || m > 59) fail(`${said}: ${hours}:${minutes} is not a time of day: expected 00:00 to 23:59`);
  return h * 60 + m;
}

// ---- from = "2026-12-18 12:00", until = "2027-01-04 08:00"

const LOCAL_TIME = /^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})\s*$/;
const ONCE_EXAMPLE = 'e.g. from = "2026-12-18 12:00" and until = "2027-01-04 08:00"';

function readOnce(raw: Record<string, unknown>, timezone: string): Rule {
  if (raw.from === undefined) fail(`until is given without from: a one-off window needs both, ${ONCE_EXAMPLE}`);
  if (raw.until === undefined) fail(`from is given without until: a one-off window needs both, ${ONCE_EXAMPLE}`);
  const fromText = text("from", raw.from, "2026-12-18 12:00");
  const untilText = text("until", raw.until, "2027-01-04 08:00");
  const from = instantOf(localTime("from", fromText), timezone);
  const until = instantOf(localTime("until", untilText), timezone);
  if (until <= from)
    fail(
      `until = ${JSON.stringify(untilText)} is not after from = ${JSON.stringify(fromText)}: the window would be empty`,
    );
  return { kind: "once", from, until };
}

/** The wall time a "YYYY-MM-DD HH:MM" names, as the epoch milliseconds it would be were the zone UTC. */
function localTime(key: string, value: string): number {
  const said = `${key} = ${JSON.stringify(value)}`;
  const m = LOCAL_TIME.exec(value);
  if (!m) fail(`${said}: expected "YYYY-MM-DD HH:MM", ${ONCE_EXAMPLE}`);
  const [y, mo, d, h, mi] = m.slice(1).map(Number) as [number, number, number, number, number];
  const wall = Date.UTC(y, mo - 1, d, h, mi);
  // Date.UTC rolls 31 April over into 1 May: a field that comes back changed did not exist.
  const back = new Date(wall);
  const same =
    back.getUTCFullYear() === y &&
    back.getUTCMonth() === mo - 1 &&
    back.getUTCDate() === d &&
    back.getUTCHours() === h &&
    back.getUTCMinutes() === mi;
  if (!same) fail(`${said}: there is no such date and time`);
  return wall;
}

// ---- start = "0 18 L * *", end = "0 9 2 * *"

const CRON_FIELDS = "minute hour day-of-month month day-of-week";
type Field = { name: string; min: number; max: number; names?: string[] };
const FIELDS: Field[] = [
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day-of-month", min: 1, max: 31 },
  { name: "month", min: 1, max: 12, names: ["", ...MONTHS] },
  { name: "day-of-week", min: 0, max: 7, names: DAYS }, // 7 is Sunday too, as in cron
];
const ITEM = /^(?:\*|([a-z0-9]+)(?:-([a-z0-9]+))?)(?:\/(\d+))?$/i;

function readCronWindow(raw: Record<string, unknown>): Rule {
  const example = 'e.g. start = "0 18 L * *" and end = "0 9 2 * *"';
  if (raw.start === undefined)
    fail(`end is given without start: a cron window runs from each start to the next end, ${example}`);
  if (raw.end === undefined)
    fail(`start is given without end: a cron window runs from each start to the next end, ${example}`);
  const start = readCron("start", text("start", raw.start, "0 18 L * *"));
  const end = readCron("end", text("end", raw.end, "0 9 2 * *"));
  if (start.text.trim().split(/\s+/).join(" ") === end.text.trim().split(/\s+/).join(" "))
    fail(`start and end are both ${JSON.stringify(start.text)}: an end at its own start leaves the window empty`);
  return { kind: "cron", start, end };
}

function readCron(key: string, value: string): Cron {
  const said = `${key} = ${JSON.stringify(value)}`;
  const fields = value.trim().split(/\s+/);
  if (fields.length !== 5) fail(`${said}: expected 5 fields, "${CRON_FIELDS}", e.g. "0 18 L * *"`);
  const field = (i: number): Allowed => cronField(said, fields[i] ?? "", FIELDS[i] as Field);
  const [minutes, hours, days, months, weekdays] = [field(0), field(1), field(2), field(3), field(4)];
  weekdays.values[0] ||= weekdays.values[7] === true;
  const times: number[] = [];
  for (let h = 0; h < 24; h++)
    for (let m = 0; m < 60; m++) if (hours.values[h] && minutes.values[m]) times.push(h * 60 + m);
  const cron: Cron = {
    text: value,
    times,
    days: days.values,
    lastDay: days.last,
    months: months.values,
    weekdays: weekdays.values.slice(0, 7),
    // Cron's own rule (Vixie cron, and GitLab's): with both day fields restricted, neither
    // starting with *, a day matching either fires; "13 * FRI" is every 13th and every Friday.
    eitherDay: !fields[2]?.startsWith("*") && !fields[4]?.startsWith("*"),
  };
  const gap = longestGap(cron);
  if (gap === null) fail(`${said} never fires: no date has the day-of-month, month and day-of-week it asks for`);
  if (gap > CRON_REACH_DAYS)
    fail(
      `${said} fires less than once every ${CRON_REACH_DAYS} days (up to ${gap} days apart): use from and until for a rare window`,
    );
  return cron;
}

type Allowed = { values: boolean[]; last: boolean };

function cronField(said: string, value: string, field: Field): Allowed {
  const allowed: Allowed = { values: new Array<boolean>(field.max + 1).fill(false), last: false };
  const isDayOfMonth = field.name === "day-of-month";
  const forms = `*, a number, a range a-b, a list a,b, or a step */n or a-b/n${isDayOfMonth ? ", or L (the last day)" : ""}`;
  for (const item of value.split(",")) {
    if (item.toUpperCase() === "L") {
      if (!isDayOfMonth) fail(`${said}: L (the last day of the month) belongs in day-of-month, not in ${field.name}`);
      allowed.last = true;
      continue;
    }
    const m = ITEM.exec(item);
    if (!m) fail(`${said}: ${field.name} ${JSON.stringify(item)} is not understood: expected ${forms}`);
    const [, low, high, step] = m;
    if (step !== undefined && low !== undefined && high === undefined)
      fail(
        `${said}: ${field.name} ${JSON.stringify(item)} steps from a single value: write a range, e.g. ${low}-${field.max}/${step}`,
      );
    const from = low === undefined ? field.min : cronValue(said, low, field);
    const to = low === undefined ? field.max : high === undefined ? from : cronValue(said, high, field);
    if (from > to) fail(`${said}: ${field.name} range ${item} runs backwards: write the smaller value first`);
    const every = step === undefined ? 1 : Number(step);
    if (every < 1) fail(`${said}: ${field.name} step /${step} is not a step: expected /1 or more`);
    for (let v = from; v <= to; v += every) allowed.values[v] = true;
  }
  return allowed;
}

function cronValue(said: string, token: string, field: Field): number {
  const named = field.names?.findIndex((n) => n !== "" && n.toLowerCase() === token.toLowerCase()) ?? -1;
  if (named >= 0) return named;
  if (!/^\d+$/.test(token))
    fail(`${said}: ${field.name} ${JSON.stringify(token)} is not a number${field.names ? " or a name" : ""}`);
  const n = Number(token);
  if (n < field.min || n > field.max)
    fail(`${said}: ${field.name} ${n} is out of range: expected ${field.min} to ${field.max}`);
  return n;
}

// The Gregorian calendar, weekdays included, repeats every 400 years (146097 days,
// a whole number of weeks): one walk through a cycle finds the longest wait between
// firing days, or that there is none. The walk counts the date along rather than
// asking Date for each day: about a millisecond, once per cron, at start-up.
const CYCLE_DAYS = 146_097;

function longestGap(c: Cron): number | null {
  let first: number | null = null;
  let last = 0;
  let longest = 0;
  let year = 2000;
  let month = 1;
  let dayOfMonth = 1;
  let weekday = 6; // 2000-01-01 was a Saturday
  for (let day = 0; day < CYCLE_DAYS; day++) {
    const length = monthLength(year, month);
    if (firesOnDate(c, month, dayOfMonth, dayOfMonth === length, weekday)) {
      if (first === null) first = day;
      else longest = Math.max(longest, day - last);
      last = day;
    }
    weekday = (weekday + 1) % 7;
    dayOfMonth++;
    if (dayOfMonth > length) {
      dayOfMonth = 1;
      month++;
    }
    if (month > 12) {
      month = 1;
      year++;
    }
  }
  return first === null ? null : Math.max(longest, first + CYCLE_DAYS - last);
}

function monthLength(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

// ---------------------------------------------------------------------------
// Occurrences: when a window is in force.

/** The occurrence of `w` in force at `t` (from ≤ t < until), or null. */
export function occurrenceAt(w: Window, t: number): Occurrence | null {
  const r = w.rule;
  if (r.kind === "once") return r.from <= t && t < r.until ? { from: r.from, until: r.until } : null;
  if (r.kind === "weekly") {
    // The latest start day on or before today, and the one a week before: a weekly
    // window lasts less than a week of wall time, so no other occurrence can cover t.
    const today = Math.floor(wallOf(t, w.timezone) / DAY);
    const latest = today - mod(weekdayOf(today) - r.start.day, 7);
    for (const day of [latest, latest - 7]) {
      const o = weeklyFrom(r.start, r.end, day, w.timezone);
      if (o.from <= t && t < o.until) return o;
    }
    return null;
  }
  return cronAt(r.start, r.end, w.timezone, t);
}

/**
 * The next `count` occurrences of `w`, in order, that are not over by `after`:
 * the one in force at `after` if there is one, then those that start later.
 * Occurrences a daylight-saving gap leaves empty are skipped.
 */
export function nextOccurrences(w: Window, after: number, count: number): Occurrence[] {
  const r = w.rule;
  const found: Occurrence[] = [];
  if (count <= 0) return found;
  if (r.kind === "once") {
    if (r.until > after) found.push({ from: r.from, until: r.until });
    return found;
  }
  if (r.kind === "weekly") {
    const today = Math.floor(wallOf(after, w.timezone) / DAY);
    // From the start day a week before the latest: that occurrence may still be in force.
    let day = today - mod(weekdayOf(today) - r.start.day, 7) - 7;
    for (let weeks = 0; found.length < count && weeks < count + 3; weeks++, day += 7) {
      const o = weeklyFrom(r.start, r.end, day, w.timezone);
      if (o.until > after && o.from < o.until) found.push(o);
    }
    return found;
  }
  const now = cronAt(r.start, r.end, w.timezone, after);
  if (now) found.push(now);
  let from = now ? now.until : after;
  while (found.length < count) {
    const next = cronAfter(r.start, r.end, w.timezone, from);
    if (next === null) break;
    found.push(next);
    from = next.until;
  }
  return found;
}

// ---- Weekly

/** The occurrence of a weekly window that starts on local day `day` (days since 1970-01-01). */
function weeklyFrom(start: WeekTime, end: WeekTime, day: number, timezone: string): Occurrence {
  // "Mon 08:00 - Mon 06:00" runs nearly a week; "Mon 08:00 - Mon 17:00" runs the day.
  let days = mod(end.day - start.day, 7);
  if (days === 0 && end.minute < start.minute) days = 7;
  return {
    from: instantOf(day * DAY + start.minute * MINUTE, timezone),
    until: instantOf((day + days) * DAY + end.minute * MINUTE, timezone),
  };
}

// ---- Cron
//
// A cron window is frozen while its latest start is later than its latest end,
// as GitLab's deploy freezes decide. So a start begins an occurrence, more starts
// inside it change nothing, and a start at the very minute of an end is cancelled
// by it: an occurrence runs from the first start after an end to the next end.

/** The cron occurrence in force at `t`, or null. */
function cronAt(start: Cron, end: Cron, timezone: string, t: number): Occurrence | null {
  const lastStart = lastFiring(start, timezone, t);
  if (lastStart === null) return null;
  const lastEnd = lastFiring(end, timezone, t);
  if (lastEnd !== null && lastEnd >= lastStart) return null;
  const from = lastEnd === null ? lastStart : (nextFiring(start, timezone, lastEnd) ?? lastStart);
  const until = nextFiring(end, timezone, t);
  return until === null ? null : { from, until };
}

/** The first cron occurrence starting after `t`, where `t` is not inside one; null if none within reach. */
function cronAfter(start: Cron, end: Cron, timezone: string, t: number): Occurrence | null {
  let from = nextFiring(start, timezone, t);
  // A start cancelled by an end at the same minute begins nothing: try the next one, a bounded number of
  // times (a window whose every start is cancelled is refused when read; this bound is the safety net).
  for (let tries = 0; from !== null && lastFiring(end, timezone, from) === from; tries++)
    from = tries < CANCELLED_STARTS ? nextFiring(start, timezone, from) : null;
  if (from === null) return null;
  const until = nextFiring(end, timezone, from);
  return until === null ? null : { from, until };
}

/** Whether the cron fires on local day `day` (days since 1970-01-01). */
function firesOn(c: Cron, day: number): boolean {
  const date = new Date(day * DAY);
  const year = date.getUTCFullYear();
  const month = date.getUTCMonth() + 1;
  const dayOfMonth = date.getUTCDate();
  return firesOnDate(c, month, dayOfMonth, dayOfMonth === monthLength(year, month), date.getUTCDay());
}

/** Whether the cron fires on a date: its month, and its day-of-month and day-of-week (either or both, see eitherDay). */
function firesOnDate(c: Cron, month: number, dayOfMonth: number, lastOfMonth: boolean, weekday: number): boolean {
  if (!c.months[month]) return false;
  const onDay = c.days[dayOfMonth] === true || (c.lastDay && lastOfMonth);
  const onWeekday = c.weekdays[weekday] === true;
  return c.eitherDay ? onDay || onWeekday : onDay && onWeekday;
}

// Day by day, then within the day by halving: the firing times of a day, as
// instants, rise with the wall time, so the first one after `t` is found in
// about ten time zone look-ups rather than one per minute.

/** The first time the cron fires strictly after `t`, or null if not within reach. */
function nextFiring(c: Cron, timezone: string, t: number): number | null {
  const today = Math.floor(wallOf(t, timezone) / DAY);
  for (let day = today; day <= today + CRON_REACH_DAYS; day++) {
    if (!firesOn(c, day)) continue;
    const i = firstWhere(c.times.length, (i) => firing(c, day, i, timezone) > t);
    if (i < c.times.length) return firing(c, day, i, timezone);
  }
  return null;
}

/** The last time the cron fired at or before `t`, or null if not within reach. */
function lastFiring(c: Cron, timezone: string, t: number): number | null {
  const today = Math.floor(wallOf(t, timezone) / DAY);
  for (let day = today; day >= today - CRON_REACH_DAYS; day--) {
    if (!firesOn(c, day)) continue;
    const i = firstWhere(c.times.length, (i) => firing(c, day, i, timezone) > t) - 1;
    if (i >= 0) return firing(c, day, i, timezone);
  }
  return null;
}

const firing = (c: Cron, day: number, i: number, timezone: string): number =>
  instantOf(day * DAY + (c.times[i] ?? 0) * MINUTE, timezone);

/** The first index in 0..n where `ok` holds, given it holds for every index after one where it does; n if none. */
function firstWhere(n: number, ok: (i: number) => boolean): number {
  let low = 0;
  let high = n;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (ok(mid)) high = mid;
    else low = mid + 1;
  }
  return low;
}

// ---------------------------------------------------------------------------
// Wall time and instants. A "wall" time is the reading of a zone's clock, held as
// the epoch milliseconds it would be were the zone UTC: day arithmetic on it is
// plain division. Intl gives a zone's offset at an instant; going back from a
// wall time to an instant means guessing the offset and checking the guess.

const clocks = new Map<string, Intl.DateTimeFormat>();

function clockOf(timezone: string): Intl.DateTimeFormat {
  let clock = clocks.get(timezone);
  if (clock === undefined) {
    clock = new Intl.DateTimeFormat("en-US", {
      timeZone: timezone,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    clocks.set(timezone, clock);
  }
  return clock;
}

/** How far the zone's clock is ahead of UTC at instant `t`, in milliseconds. */
function offsetAt(t: number, timezone: string): number {
  const f: Record<string, number> = {};
  for (const part of clockOf(timezone).formatToParts(t)) f[part.type] = Number(part.value);
  const wall = Date.UTC(f.year ?? 0, (f.month ?? 1) - 1, f.day ?? 1, f.hour ?? 0, f.minute ?? 0, f.second ?? 0);
  return wall - (t - mod(t, 1000));
}

/** What the zone's clock reads at instant `t`. */
export const wallOf = (t: number, timezone: string): number => t + offsetAt(t, timezone);

/**
 * The instant the zone's clock first reads `wall`. In a fold (the autumn change)
 * that is the first of the two; in a gap (the spring change) the clock never reads
 * it, and the answer is the instant the gap ends: the next minute that exists.
 */
export function instantOf(wall: number, timezone: string): number {
  // The offsets a day either side bracket any change near `wall`.
  const before = offsetAt(wall - DAY, timezone);
  const after = offsetAt(wall + DAY, timezone);
  const guesses = [wall - Math.max(before, after), wall - Math.min(before, after)]; // earlier first
  for (const t of guesses) if (wallOf(t, timezone) === wall) return t;
  if (after <= before) return wall - after; // no gap, no match: a change this method cannot see; the plain guess
  // In the gap: the first minute whose clock reading has reached `wall` is where the gap ends.
  const low = Math.floor((wall - after) / MINUTE);
  const span = Math.ceil((after - before) / MINUTE);
  return (low + firstWhere(span, (i) => wallOf((low + i) * MINUTE, timezone) >= wall)) * MINUTE;
}

const mod = (a: number, n: number): number => ((a % n) + n) % n;
const weekdayOf = (day: number): number => mod(day + 4, 7); // 1970-01-01 was a Thursday

// ---------------------------------------------------------------------------
// Locks and freezes.

/** Whether `w` freezes `lock`: a listed lock and everything under it; the root only when it lists none. */
export function covers(w: Window, lock: string): boolean {
  if (w.locks === null) return true;
  return w.locks.some((l) => l === lock || isAncestor(l, lock));
}

/**
 * The freeze on `lock` at `t`, or null. Of several windows in force, the one that
 * ends last wins; of those ending together, the one listed first. Only the windows in force at `t` count: if another window starts
 * just as the winner ends, releasing stays frozen longer than `until` says, and the
 * next call, at that time, tells of it.
 */
export function freezeOn(windows: Window[], lock: string, t: number): Freeze | null {
  let found: Freeze | null = null;
  for (const w of windows) {
    if (!covers(w, lock)) continue;
    const o = occurrenceAt(w, t);
    if (o !== null && (found === null || o.until > found.until)) found = { ...o, reason: w.reason, window: w };
  }
  return found;
}

/** The next freeze on `lock` that starts after `t` (strictly), or null: the earliest start, then the latest end. */
export function nextFreeze(windows: Window[], lock: string, t: number): Freeze | null {
  let found: Freeze | null = null;
  for (const w of windows) {
    if (!covers(w, lock)) continue;
    const o = nextOccurrences(w, t, 2).find((o) => o.from > t);
    if (o === undefined) continue;
    const sooner = found === null || o.from < found.from || (o.from === found.from && o.until > found.until);
    if (sooner) found = { ...o, reason: w.reason, window: w };
  }
  return found;
}

// ---------------------------------------------------------------------------
// Words.

// English abbreviations come from CLDR, which gives each locale only the ones used
// there: en-US knows EST but writes Budapest's zone as GMT+1, en-GB knows CET but not
// EST. The first that is a name rather than an offset is the one a reader expects.
const ZONE_LOCALES = ["en-US", "en-GB"];
const zoneNames = new Map<string, Intl.DateTimeFormat>();

function zoneName(t: number, timezone: string): string {
  let offset = "";
  for (const locale of ZONE_LOCALES) {
    const key = `${locale} ${timezone}`;
    let f = zoneNames.get(key);
    if (f === undefined) {
      f = new Intl.DateTimeFormat(locale, { timeZone: timezone, timeZoneName: "short" });
      zoneNames.set(key, f);
    }
    const name = f.formatToParts(t).find((p) => p.type === "timeZoneName")?.value ?? "";
    if (!/^GMT[+-]/.test(name)) return name;
    offset ||= name;
  }
  return offset;
}

const two = (n: number) => String(n).padStart(2, "0");

/**
 * `t` on the zone's clock: "Mon 08:00 CET" when it is less than six days after
 * `now`, so the day name alone is unmistakable; else, or without `now`, with the
 * date: "Mon 2027-01-04 08:00 CET".
 */
export function describeLocalTime(t: number, timezone: string, now?: number): string {
  const wall = new Date(wallOf(t, timezone));
  const day = DAYS[wall.getUTCDay()];
  const clock = `${two(wall.getUTCHours())}:${two(wall.getUTCMinutes())}`;
  const soon = now !== undefined && now <= t && t < now + 6 * DAY;
  const date = `${wall.getUTCFullYear()}-${two(wall.getUTCMonth() + 1)}-${two(wall.getUTCDate())}`;
  return `${day} ${soon ? "" : `${date} `}${clock} ${zoneName(t, timezone)}`;
}

/** "releasing on prod is frozen until Mon 08:00 CET (weekend)"; the original's lock and the root go unnamed. */
export function describeFreeze(lock: string, freeze: Freeze, now?: number): string {
  const on = lock === DEFAULT_LOCK || lock === ROOT ? "" : ` on ${lock}`;
  return `releasing${on} is frozen until ${describeLocalTime(freeze.until, freeze.window.timezone, now)} (${freeze.reason})`;
}
