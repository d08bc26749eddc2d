// The freeze calendar: windows of time during which releasing on some locks is
// frozen, as pure functions of a window and an instant (epoch milliseconds).
// Nothing here reads the clock or does I/O: the daemon passes the time in, so
// the same rules serve start-up checks, requests and tests. (What is worked out
// is kept, see Occurrences, but the answers depend only on the window and time.)
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
import { unreadable } from "./visible.ts";

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
  if (unreadable(reason))
    fail(
      "reason has control characters or invisible format characters (such as direction marks): write it as plain text",
    );
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
const zoneSpellings = new Map<string, string | null>(); // as written → as Intl spells it, or null: not a zone; asked once each

function readTimezone(value: unknown): string {
  if (value === undefined) return "UTC";
  const name = text("timezone", value, "Europe/Budapest");
  // Intl also takes offsets ("+01:00"), which know no daylight saving: only names are time zones here.
  if (!/^[A-Za-z][A-Za-z0-9_+-]*(\/[A-Za-z0-9_+-]+)*$/.test(name))
    fail(`timezone = ${JSON.stringify(name)} is not a time zone: expected an IANA name such as "Europe/Budapest"`);
  if (!zoneSpellings.has(name)) zoneSpellings.set(name, spelledByIntl(name));
  const zone = zoneSpellings.get(name);
  if (!zone)
    fail(`timezone = ${JSON.stringify(name)} is not a time zone: expected an IANA name such as "Europe/Budapest"`);
  return zone;
}

function spelledByIntl(name: string): string | null {
  try {
    return new Intl.DateTimeFormat("en-US", { timeZone: name }).resolvedOptions().timeZone;
  } catch {
    return null;
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
  const [fromWall, untilWall] = [localTime("from", fromText), localTime("until", untilText)];
  if (untilWall <= fromWall)
    fail(
      `until = ${JSON.stringify(untilText)} is not after from = ${JSON.stringify(fromText)}: the window would be empty`,
    );
  const [from, until] = [instantOf(fromWall, timezone), instantOf(untilWall, timezone)];
  // A time in a spring gap means the gap's end, so until can only fail to be after from when from is in the gap.
  if (until <= from) {
    const [before, after] = [wallOf(from - 1, timezone) + 1, wallOf(from, timezone)].map(clockTime);
    fail(
      `from = ${JSON.stringify(fromText)} does not exist in ${timezone}: clocks jump from ${before} to ${after}, so the window would be empty; choose a time outside the gap`,
    );
  }
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
  const gap = longestGapOf(cron);
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

// The Gregorian calendar, weekdays included, repeats every 400 years (4800 months,
// a whole number of weeks): one walk through a cycle, a month at a time, finds the
// longest wait between firing days, or that there is none. A wait longer than a
// month runs from a month's last firing day to a later month's first, so those are
// the only ones measured; a wait within a month (at most 30 days) never matters.
const CYCLE_DAYS = 146_097;
const CYCLE_START = Date.UTC(2000, 0, 1) / DAY; // as days since 1970-01-01

// Thousands of windows share a few day rules ("L * *", "* * MON-FRI"): each rule is walked once.
const gaps = new Map<string, number | null>();

function longestGapOf(c: Cron): number | null {
  const rule = JSON.stringify([c.days, c.lastDay, c.months, c.weekdays, c.eitherDay]);
  let gap = gaps.get(rule);
  if (gap === undefined) {
    gap = longestGap(c);
    gaps.set(rule, gap);
  }
  return gap;
}

function longestGap(c: Cron): number | null {
  let first: number | null = null;
  let last = 0;
  let longest = 0;
  let monthStart = CYCLE_START;
  for (let year = 2000; year < 2400; year++)
    for (let month = 1; month <= 12; month++) {
      const days = firingDays(c, year, month, monthStart);
      if (days !== 0) {
        if (first === null) first = monthStart + lowestBit(days);
        else longest = Math.max(longest, monthStart + lowestBit(days) - last);
        last = monthStart + highestBit(days);
      }
      monthStart += monthLength(year, month);
    }
  return first === null ? null : Math.max(longest, first + CYCLE_DAYS - last);
}

function monthLength(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

// A month's firing days are a set of bits, bit 0 for the 1st: the search jumps to the
// next month that has one, then straight to the day, instead of trying date after date.

/** A cron's days as bits: day-of-month, and day-of-week laid on a month for each weekday its 1st can fall on. */
type DayBits = { days: number; weekdays: number[] };
const dayBitsOf = new WeakMap<Cron, DayBits>(); // beside the cron, not in it: a window's identity is its JSON

function dayBits(c: Cron): DayBits {
  let bits = dayBitsOf.get(c);
  if (bits === undefined) {
    const set = (on: (dayOfMonth: number) => boolean) => {
      let b = 0;
      for (let d = 1; d <= 31; d++) if (on(d)) b |= 1 << (d - 1);
      return b;
    };
    bits = {
      days: set((d) => c.days[d] === true),
      weekdays: [0, 1, 2, 3, 4, 5, 6].map((firstWeekday) =>
        set((d) => c.weekdays[(firstWeekday + d - 1) % 7] === true),
      ),
    };
    dayBitsOf.set(c, bits);
  }
  return bits;
}

/**
 * The days of a month the cron fires on, as bits: its month, and its day-of-month and day-of-week (either or
 * both, see eitherDay). `monthStart` is the month's 1st, as days since 1970-01-01.
 */
function firingDays(c: Cron, year: number, month: number, monthStart: number): number {
  if (!c.months[month]) return 0;
  const bits = dayBits(c);
  const length = monthLength(year, month);
  const onDay = bits.days | (c.lastDay ? 1 << (length - 1) : 0);
  const onWeekday = bits.weekdays[weekdayOf(monthStart)] ?? 0;
  return (c.eitherDay ? onDay | onWeekday : onDay & onWeekday) & (2 ** length - 1);
}

const lowestBit = (bits: number): number => 31 - Math.clz32(bits & -bits);
const highestBit = (bits: number): number => 31 - Math.clz32(bits);

/** The first local day from `day` to `last` (days since 1970-01-01) the cron fires on, or null. */
function firingDayFrom(c: Cron, day: number, last: number): number | null {
  const date = new Date(day * DAY);
  let [year, month] = [date.getUTCFullYear(), date.getUTCMonth() + 1];
  let monthStart = day - (date.getUTCDate() - 1);
  let earlier = (1 << (date.getUTCDate() - 1)) - 1; // the days of the month before `day`
  while (monthStart <= last) {
    const days = firingDays(c, year, month, monthStart) & ~earlier;
    if (days !== 0) return monthStart + lowestBit(days) <= last ? monthStart + lowestBit(days) : null;
    monthStart += monthLength(year, month);
    [year, month] = month === 12 ? [year + 1, 1] : [year, month + 1];
    earlier = 0;
  }
  return null;
}

/** The last local day from `first` to `day` the cron fires on, or null. */
function firingDayUntil(c: Cron, day: number, first: number): number | null {
  const date = new Date(day * DAY);
  let [year, month] = [date.getUTCFullYear(), date.getUTCMonth() + 1];
  let monthStart = day - (date.getUTCDate() - 1);
  let upTo = 2 ** date.getUTCDate() - 1; // the days of the month up to `day`
  while (monthStart + monthLength(year, month) > first) {
    const days = firingDays(c, year, month, monthStart) & upTo;
    if (days !== 0) return monthStart + highestBit(days) >= first ? monthStart + highestBit(days) : null;
    [year, month] = month === 1 ? [year - 1, 12] : [year, month - 1];
    monthStart -= monthLength(year, month);
    upTo = 2 ** 31 - 1;
  }
  return null;
}

// ---------------------------------------------------------------------------
// Occurrences: when a window is in force.
//
// Working an occurrence out searches the schedule on the window's clock: quick, but
// thousands of windows asked afresh for every start, page and tick of the keeper
// add up. So each window keeps the occurrences it has worked out, and moves them on
// as time goes: a boundary is searched for once, when time first reaches it.

/** What a window knows of its occurrences: each one overlapping [from, until), in order, and the last over by `from`. */
type Known = { from: number; until: number; list: Occurrence[]; previous?: Occurrence | null }; // previous: undefined until asked
const knownOf = new WeakMap<Window, Known>(); // beside the window, not in it: a reload's new windows start afresh

/** What `w` knows, up to and past `t`: the occurrence in force at `t`, or the next one, is in the list. */
function known(w: Window, t: number): Known {
  let k = knownOf.get(w);
  if (k === undefined || t < k.from || t >= k.until) {
    // Asked for the first time, or about a time it does not know (a clock set back or jumped ahead, a test):
    // worked out afresh at t, which costs no more than learning the occurrences in between one by one.
    const o = inForceAt(w, t);
    k = { from: t, until: o ? o.until : t, list: o ? [o] : [] };
    knownOf.set(w, k);
    if (!o) learnNext(w, k);
  }
  // Time has moved on: of the occurrences over by t, only the latest is kept (lastOccurrence asks for it).
  const overByT = (o: Occurrence | undefined) => o !== undefined && o.until <= t;
  while (overByT(k.list[1])) {
    const over = k.list.shift() as Occurrence;
    k.previous = over;
    k.from = over.until;
  }
  return k;
}

/** Learns the window's next occurrence after those it knows; none (ever again) leaves nothing more to learn. */
function learnNext(w: Window, k: Known): void {
  const next = firstFrom(w, k.until);
  if (next) k.list.push(next);
  k.until = next ? next.until : Number.POSITIVE_INFINITY;
}

const copy = (o: Occurrence): Occurrence => ({ from: o.from, until: o.until });

/** The occurrence of `w` in force at `t` (from ≤ t < until), or null. */
export function occurrenceAt(w: Window, t: number): Occurrence | null {
  const o = known(w, t).list.find((o) => o.from <= t && t < o.until);
  return o ? copy(o) : null;
}

/**
 * The next `count` occurrences of `w`, in order, that are not over by `after`:
 * the one in force at `after` if there is one, then those that start later.
 * Occurrences a daylight-saving gap leaves empty are skipped.
 */
export function nextOccurrences(w: Window, after: number, count: number): Occurrence[] {
  if (count <= 0) return [];
  const k = known(w, after);
  const coming = () => k.list.filter((o) => o.until > after);
  while (coming().length < count && k.until < Number.POSITIVE_INFINITY) learnNext(w, k);
  return coming().slice(0, count).map(copy);
}

/** The latest occurrence of `w` over by `t` (until ≤ t), looked for as far back as CRON_REACH_DAYS; or null. */
export function lastOccurrence(w: Window, t: number): Occurrence | null {
  const k = known(w, t);
  let over = k.list.filter((o) => o.until <= t).at(-1);
  if (over === undefined) {
    if (k.previous === undefined) k.previous = lastBefore(w, k.from);
    over = k.previous ?? undefined;
  }
  return over && over.until >= t - CRON_REACH_DAYS * DAY ? copy(over) : null;
}

// Each schedule answers three questions from scratch; the cache above asks them.

/** The occurrence in force at `t`, or null. */
function inForceAt(w: Window, t: number): Occurrence | null {
  const r = w.rule;
  if (r.kind === "once") return r.from <= t && t < r.until ? { from: r.from, until: r.until } : null;
  // A weekly window lasts less than a week of wall time: the latest start or the one before covers t, if any does.
  if (r.kind === "weekly")
    return weeksAround(w.timezone, r, t, [0, -1]).find((o) => o.from <= t && t < o.until) ?? null;
  return cronAt(r.start, r.end, w.timezone, t);
}

/** The first occurrence that starts at `t` or later, where `t` is not inside one; null if none (within reach). */
function firstFrom(w: Window, t: number): Occurrence | null {
  const r = w.rule;
  if (r.kind === "once") return r.from >= t ? { from: r.from, until: r.until } : null;
  // At or after, not only after: a spring gap can move a start onto the previous end.
  if (r.kind === "weekly") return weeksAround(w.timezone, r, t, [0, 1, 2]).find((o) => o.from >= t) ?? null;
  return cronAfter(r.start, r.end, w.timezone, t); // a cron start at t would be in force at t, or cancelled by the end there
}

/** The latest occurrence over by `t` (until ≤ t), or null if none (within reach). */
function lastBefore(w: Window, t: number): Occurrence | null {
  const r = w.rule;
  if (r.kind === "once") return r.until <= t ? { from: r.from, until: r.until } : null;
  if (r.kind === "weekly") return weeksAround(w.timezone, r, t, [0, -1, -2, -3]).find((o) => o.until <= t) ?? null;
  return cronBefore(r.start, r.end, w.timezone, t);
}

// ---- Weekly

/**
 * The weekly occurrences starting the given numbers of weeks after the latest start
 * day on or before t's date, in that order, without those a daylight-saving gap leaves empty.
 */
function weeksAround(timezone: string, r: { start: WeekTime; end: WeekTime }, t: number, weeks: number[]) {
  const today = Math.floor(wallOf(t, timezone) / DAY);
  const latest = today - mod(weekdayOf(today) - r.start.day, 7);
  return weeks.map((n) => weeklyFrom(r.start, r.end, latest + 7 * n, timezone)).filter((o) => o.from < o.until);
}

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

/** The latest cron occurrence over by `t`; null if none within reach. */
function cronBefore(start: Cron, end: Cron, timezone: string, t: number): Occurrence | null {
  // The occurrence of the latest start that is not cancelled; if it is still running at t, the one before.
  let started = lastFiring(start, timezone, t);
  for (let tries = 0; started !== null && tries <= CANCELLED_STARTS; tries++) {
    const lastEnd = lastFiring(end, timezone, started);
    if (lastEnd === started) {
      started = lastFiring(start, timezone, started - 1);
      continue;
    }
    const from = lastEnd === null ? started : (nextFiring(start, timezone, lastEnd) ?? started);
    const until = nextFiring(end, timezone, started);
    if (until === null) return null;
    if (until <= t) return { from, until };
    started = lastFiring(start, timezone, from - 1);
  }
  return null;
}

// Month by month, then day by day within the bits of a month, then within the day
// by halving: the firing times of a day, as instants, rise with the wall time, so
// the first one after `t` is found in about ten time zone look-ups, not one a minute.

/** The first time the cron fires strictly after `t`, or null if not within reach. */
function nextFiring(c: Cron, timezone: string, t: number): number | null {
  const today = Math.floor(wallOf(t, timezone) / DAY);
  for (let day = firingDayFrom(c, today, today + CRON_REACH_DAYS); day !== null; ) {
    const on = day;
    const i = firstWhere(c.times.length, (i) => firing(c, on, i, timezone) > t);
    if (i < c.times.length) return firing(c, on, i, timezone);
    day = firingDayFrom(c, on + 1, today + CRON_REACH_DAYS);
  }
  return null;
}

/** The last time the cron fired at or before `t`, or null if not within reach. */
function lastFiring(c: Cron, timezone: string, t: number): number | null {
  const today = Math.floor(wallOf(t, timezone) / DAY);
  for (let day = firingDayUntil(c, today, today - CRON_REACH_DAYS); day !== null; ) {
    const on = day;
    const i = firstWhere(c.times.length, (i) => firing(c, on, i, timezone) > t) - 1;
    if (i >= 0) return firing(c, on, i, timezone);
    day = firingDayUntil(c, on - 1, today - CRON_REACH_DAYS);
  }
  return null;
}

const firing = (c: Cron, day: number, i: number, timezone: string): number =>
  instantOf(day * DAY + (c.times[i] ?? 0) * MINUTE, timezone);

/** The first index in 0..n where `ok` holds, given it holds for every index after one where it does; n if none. */
function firstWhere(n: number, ok: (i: number) => boolean): number {
  // The ends first: on every day but t's own, a cron's search wants its first or last time of the day.
  if (n === 0 || ok(0)) return 0;
  if (!ok(n - 1)) return n;
  let low = 1;
  let high = n - 1;
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

// Asking Intl costs microseconds, and a search asks thousands of times. A zone's
// offset changes a few times a year at most, so each UTC day is asked about at its
// two ends once: the same offset at both means the day has none of the rare changes
// (the same assumption instantOf makes of the days around a wall time), and every
// instant of it has that offset. Only a day with a change asks Intl for each instant.
const steadyDays = new Map<string, number | null>(); // "zone day" → the day's offset, or null if it changes that day
const STEADY_DAYS_KEPT = 100_000;

/** How far the zone's clock is ahead of UTC at instant `t`, in milliseconds. */
function offsetAt(t: number, timezone: string): number {
  if (timezone === "UTC") return 0;
  const day = Math.floor(t / DAY);
  const key = `${timezone} ${day}`;
  let steady = steadyDays.get(key);
  if (steady === undefined) {
    const [start, end] = [askOffset(day * DAY, timezone), askOffset((day + 1) * DAY, timezone)];
    steady = start === end ? start : null;
    if (steadyDays.size >= STEADY_DAYS_KEPT) steadyDays.clear();
    steadyDays.set(key, steady);
  }
  return steady ?? askOffset(t, timezone);
}

/** The zone's offset at `t`, as Intl tells it. */
function askOffset(t: number, timezone: string): number {
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
  if (before === after) return wall - after; // no change near: what the checks below would find, without asking
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

/** "08:00": the time of day of a wall time. */
const clockTime = (wall: number): string => {
  const at = new Date(wall);
  return `${two(at.getUTCHours())}:${two(at.getUTCMinutes())}`;
};

/**
 * `t` on the zone's clock: "Mon 08:00 CET" when it is less than six days after
 * `now`, so the day name alone is unmistakable; else, or without `now`, with the
 * date: "Mon 2027-01-04 08:00 CET".
 */
export function describeLocalTime(t: number, timezone: string, now?: number): string {
  const wall = new Date(wallOf(t, timezone));
  const day = DAYS[wall.getUTCDay()];
  const clock = clockTime(wall.getTime());
  const soon = now !== undefined && now <= t && t < now + 6 * DAY;
  const date = `${wall.getUTCFullYear()}-${two(wall.getUTCMonth() + 1)}-${two(wall.getUTCDate())}`;
  return `${day} ${soon ? "" : `${date} `}${clock} ${zoneName(t, timezone)}`;
}

/** "releasing on prod is frozen until Mon 08:00 CET (weekend)"; the original's lock and the root go unnamed. */
export function describeFreeze(lock: string, freeze: Freeze, now?: number): string {
  const on = lock === DEFAULT_LOCK || lock === ROOT ? "" : ` on ${lock}`;
  return `releasing${on} is frozen until ${describeLocalTime(freeze.until, freeze.window.timezone, now)} (${freeze.reason})`;
}
