// The freeze calendar alone, without the daemon: time is passed in as epoch
// milliseconds, written here as ISO times with the zone's own offset so each
// expectation reads as the clock on the wall would show it.
import { describe, expect, test } from "bun:test";
import {
  type Cron,
  covers,
  describeFreeze,
  describeLocalTime,
  freezeOn,
  lastOccurrence,
  nextFreeze,
  nextOccurrences,
  type Occurrence,
  occurrenceAt,
  parseWindow,
  type Window,
  wallOf,
} from "../src/calendar.ts";

const at = (iso: string): number => {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) throw new Error(`not a time: ${iso}`);
  return t;
};
const span = (from: string, until: string): Occurrence => ({ from: at(from), until: at(until) });

function window(raw: Record<string, unknown>): Window {
  const w = parseWindow(raw);
  if (typeof w === "string") throw new Error(`expected a window, got: ${w}`);
  return w;
}
const problem = (raw: Record<string, unknown>): string => {
  const w = parseWindow(raw);
  if (typeof w !== "string") throw new Error(`expected a problem, got a window: ${JSON.stringify(w)}`);
  return w;
};

const BUDAPEST = "Europe/Budapest";
const NEW_YORK = "America/New_York";
const weekend = window({ reason: "weekend", locks: ["prod"], every: "Fri 16:00 - Mon 08:00", timezone: BUDAPEST });
const endOfYear = window({
  reason: "end-of-year freeze",
  from: "2026-12-18 12:00",
  until: "2027-01-04 08:00",
  timezone: BUDAPEST,
});
const monthlyClose = window({ reason: "monthly close", start: "0 18 L * *", end: "0 9 2 * *" });

describe("parseWindow reads each of the three schedules", () => {
  test("a weekly window keeps its days (0 is Sunday) and minutes after midnight", () => {
    expect(weekend).toEqual({
      reason: "weekend",
      locks: ["prod"],
      timezone: BUDAPEST,
      rule: { kind: "weekly", start: { day: 5, minute: 16 * 60 }, end: { day: 1, minute: 8 * 60 } },
    });
  });
  test("day names are read in any case, and an hour may have one digit", () => {
    const w = window({ reason: "r", every: "fri 9:00 - MON 08:30" });
    expect(w.rule).toEqual({ kind: "weekly", start: { day: 5, minute: 9 * 60 }, end: { day: 1, minute: 8 * 60 + 30 } });
  });
  test("a one-off window's local times become instants in its time zone", () => {
    expect(endOfYear.rule).toEqual({
      kind: "once",
      ...span("2026-12-18T12:00:00+01:00", "2027-01-04T08:00:00+01:00"),
    });
  });
  test("a cron window keeps both expressions", () => {
    expect(monthlyClose.rule.kind).toBe("cron");
    if (monthlyClose.rule.kind !== "cron") return;
    expect(monthlyClose.rule.start.text).toBe("0 18 L * *");
    expect(monthlyClose.rule.start.lastDay).toBe(true);
    expect(monthlyClose.rule.end.text).toBe("0 9 2 * *");
  });
  test('without timezone a window is in UTC, and without locks (or with "*") it covers every lock', () => {
    expect(monthlyClose.timezone).toBe("UTC");
    expect(monthlyClose.locks).toBeNull();
    expect(window({ reason: "r", locks: "*", every: "Fri 16:00 - Mon 08:00" }).locks).toBeNull();
  });
  test("a time zone is kept as Intl spells it", () => {
    expect(window({ reason: "r", every: "Fri 16:00 - Mon 08:00", timezone: "europe/budapest" }).timezone).toBe(
      BUDAPEST,
    );
  });
});

describe("parseWindow refuses a bad window with the problem, naming the key", () => {
  const weekly = { reason: "weekend", every: "Fri 16:00 - Mon 08:00" };
  test("a cron window whose every start falls on an end never begins, and is refused rather than searched forever", () => {
    expect(problem({ reason: "x", start: "0 9 * * 1", end: "0 9 * * *" })).toStartWith(
      'start = "0 9 * * 1" never begins a window',
    );
    expect(problem({ reason: "x", start: "0 9 * * *", end: "0 09 * * *" })).toStartWith("start = ");
  });
  test("a time zone is an IANA name, not an offset", () => {
    expect(problem({ ...weekly, timezone: "+01:00" })).toStartWith('timezone = "+01:00" is not a time zone');
  });
  test("an unknown key is a problem, so a typo is not silently ignored", () => {
    expect(problem({ ...weekly, timezon: BUDAPEST })).toStartWith(
      "unknown key timezon: expected one of reason, locks,",
    );
  });
  test("reason is required, not blank, and at most 200 characters", () => {
    expect(problem({ every: weekly.every })).toStartWith("reason is missing");
    expect(problem({ ...weekly, reason: "  " })).toStartWith("reason is empty");
    expect(problem({ ...weekly, reason: "x".repeat(201) })).toStartWith("reason is 201 characters long");
    for (const hidden of ["\u202e", "\u200f", "\u061c", "\u200b", "\u0007", "\u2028"])
      expect(problem({ ...weekly, reason: `deploy${hidden}freeze` })).toStartWith("reason has control characters");
    expect(parseWindow({ ...weekly, reason: "x".repeat(200) })).not.toBeString();
    expect(problem({ ...weekly, reason: 7 })).toStartWith("reason must be a string in quotes");
  });
  test('locks is a non-empty list of lock names, or "*"', () => {
    expect(problem({ ...weekly, locks: "prod" })).toStartWith("locks must be a list of lock names");
    expect(problem({ ...weekly, locks: [] })).toStartWith("locks = [] freezes nothing");
    expect(problem({ ...weekly, locks: ["prod", "Prod"] })).toStartWith(
      'locks: "Prod" is not a lock name (one or more',
    );
    expect(problem({ ...weekly, locks: [""] })).toStartWith('locks: "" is not a lock name');
  });
  test("a time zone Intl does not know is a problem", () => {
    expect(problem({ ...weekly, timezone: "Europe/Budapst" })).toBe(
      'timezone = "Europe/Budapst" is not a time zone: expected an IANA name such as "Europe/Budapest"',
    );
  });
  test("exactly one schedule: every, from and until, or start and end", () => {
    expect(problem({ reason: "r" })).toStartWith('no schedule: give one of every = "Fri 16:00 - Mon 08:00";');
    expect(problem({ ...weekly, from: "2026-12-18 12:00", until: "2027-01-04 08:00" })).toStartWith(
      "every and from/until are both given",
    );
  });
  test("a weekly window in another shape is refused with the shape it must have", () => {
    expect(problem({ reason: "r", every: "Fri 16:00 - Mon 8" })).toBe(
      'every = "Fri 16:00 - Mon 8": expected "DAY HH:MM - DAY HH:MM" with days Mon..Sun, e.g. "Fri 16:00 - Mon 08:00"',
    );
  });
  test("a bad day or time of day is named", () => {
    expect(problem({ reason: "r", every: "Fri 16:00 - Mun 08:00" })).toBe(
      'every = "Fri 16:00 - Mun 08:00": "Mun" is not a day: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun',
    );
    expect(problem({ reason: "r", every: "Fri 24:00 - Mon 08:00" })).toContain("24:00 is not a time of day");
    expect(problem({ reason: "r", every: "Fri 16:00 - Fri 16:00" })).toContain("starts and ends at the same time");
  });
  test("a one-off window needs both ends, real dates, and until after from", () => {
    expect(problem({ reason: "r", from: "2026-12-18 12:00" })).toStartWith("from is given without until");
    expect(problem({ reason: "r", until: "2026-12-18 12:00" })).toStartWith("until is given without from");
    expect(problem({ reason: "r", from: "2026-12-18 12:00", until: "2026-12-18 11:00" })).toBe(
      'until = "2026-12-18 11:00" is not after from = "2026-12-18 12:00": the window would be empty',
    );
    expect(problem({ reason: "r", from: "2026-12-18 12:00", until: "2026-12-18 12:00" })).toContain("is not after");
    expect(problem({ reason: "r", from: "2026-02-30 12:00", until: "2026-03-02 12:00" })).toBe(
      'from = "2026-02-30 12:00": there is no such date and time',
    );
    expect(problem({ reason: "r", from: new Date(0), until: "2027-01-04 08:00" })).toBe(
      'from must be a string in quotes, e.g. from = "2026-12-18 12:00"', // an unquoted TOML date
    );
    expect(problem({ reason: "r", from: "18.12.2026 12:00", until: "2027-01-04 08:00" })).toStartWith(
      'from = "18.12.2026 12:00": expected "YYYY-MM-DD HH:MM"',
    );
  });
  test("a cron window needs both start and end", () => {
    expect(problem({ reason: "r", start: "0 18 L * *" })).toStartWith("start is given without end");
    expect(problem({ reason: "r", end: "0 9 2 * *" })).toStartWith("end is given without start");
    expect(problem({ reason: "r", start: "0 9 * * *", end: "0  9 * * *" })).toContain("an end at its own start");
  });
  test("a cron needs five fields, and a value out of range names its field", () => {
    const cron = (start: string) => problem({ reason: "r", start, end: "0 9 2 * *" });
    expect(cron("0 18 L *")).toBe(
      'start = "0 18 L *": expected 5 fields, "minute hour day-of-month month day-of-week", e.g. "0 18 L * *"',
    );
    expect(cron("60 18 * * *")).toBe('start = "60 18 * * *": minute 60 is out of range: expected 0 to 59');
    expect(cron("0 24 * * *")).toBe('start = "0 24 * * *": hour 24 is out of range: expected 0 to 23');
    expect(cron("0 18 32 * *")).toBe('start = "0 18 32 * *": day-of-month 32 is out of range: expected 1 to 31');
    expect(cron("0 18 0 * *")).toContain("day-of-month 0 is out of range");
    expect(cron("0 18 * 13 *")).toContain("month 13 is out of range: expected 1 to 12");
    expect(cron("0 18 * * 8")).toContain("day-of-week 8 is out of range: expected 0 to 7");
    expect(cron("0 18 * * 1-9")).toContain("day-of-week 9 is out of range");
    expect(problem({ reason: "r", start: "0 18 L * *", end: "0 9 2 * Fry" })).toBe(
      'end = "0 9 2 * Fry": day-of-week "Fry" is not a number or a name',
    );
  });
  test("a cron's ranges, steps and L are checked", () => {
    const cron = (start: string) => problem({ reason: "r", start, end: "0 9 2 * *" });
    expect(cron("0 L * * *")).toContain("L (the last day of the month) belongs in day-of-month, not in hour");
    expect(cron("0 18 20-10 * *")).toContain("day-of-month range 20-10 runs backwards");
    expect(cron("*/0 18 * * *")).toContain("minute step /0 is not a step");
    expect(cron("5/10 18 * * *")).toContain('minute "5/10" steps from a single value: write a range, e.g. 5-59/10');
    expect(cron("0 18 1-L * *")).toContain('day-of-month "L" is not a number');
    expect(cron("0 18 ? * *")).toContain('day-of-month "?" is not understood: expected *, a number,');
  });
  test("a cron that never fires, or fires less than once in 400 days, is refused", () => {
    const cron = (start: string) => problem({ reason: "r", start, end: "0 9 2 * *" });
    expect(cron("0 0 30 2 *")).toStartWith('start = "0 0 30 2 *" never fires');
    expect(cron("0 0 31 4,6 *")).toContain("never fires");
    expect(cron("0 0 29 2 *")).toStartWith('start = "0 0 29 2 *" fires less than once every 400 days');
    expect(parseWindow({ reason: "r", start: "0 0 24 12 *", end: "0 0 2 1 *" })).not.toBeString(); // yearly is fine
  });
});

describe("a one-off window a daylight-saving gap would leave empty is refused, naming the gap", () => {
  // Europe/Budapest on 28 March 2027 and New York on 8 March 2026 jump from 02:00 to 03:00; Lord Howe by 30 minutes.
  test("from in the gap, and until in it or at its end: the gap is named, with the times the clocks jump between", () => {
    const gap =
      'from = "2027-03-28 02:30" does not exist in Europe/Budapest: clocks jump from 02:00 to 03:00, so the window would be empty; choose a time outside the gap';
    expect(problem({ reason: "r", from: "2027-03-28 02:30", until: "2027-03-28 02:45", timezone: BUDAPEST })).toBe(gap);
    expect(problem({ reason: "r", from: "2027-03-28 02:30", until: "2027-03-28 03:00", timezone: BUDAPEST })).toBe(gap);
    expect(
      problem({ reason: "r", from: "2026-03-08 02:00", until: "2026-03-08 02:59", timezone: NEW_YORK }),
    ).toStartWith('from = "2026-03-08 02:00" does not exist in America/New_York: clocks jump from 02:00 to 03:00,');
    expect(
      problem({ reason: "r", from: "2026-10-04 02:10", until: "2026-10-04 02:20", timezone: "Australia/Lord_Howe" }),
    ).toContain("clocks jump from 02:00 to 02:30");
  });
  test("a window that only begins or ends in the gap is kept, from the gap's end; one that runs backwards is still that", () => {
    expect(
      window({ reason: "r", from: "2027-03-28 01:30", until: "2027-03-28 02:30", timezone: BUDAPEST }).rule,
    ).toEqual({
      kind: "once",
      ...span("2027-03-28T01:30:00+01:00", "2027-03-28T03:00:00+02:00"),
    });
    expect(problem({ reason: "r", from: "2027-03-28 02:45", until: "2027-03-28 02:30", timezone: BUDAPEST })).toBe(
      'until = "2027-03-28 02:30" is not after from = "2027-03-28 02:45": the window would be empty',
    );
  });
});

describe("a weekly window is in force from its start (inclusive) to its end (exclusive)", () => {
  const friday = "2026-01-09"; // a winter week in Budapest: CET, +01:00 throughout
  test("across a week boundary: Fri 16:00 to Mon 08:00", () => {
    const weekendOf9th = span(`${friday}T16:00:00+01:00`, "2026-01-12T08:00:00+01:00");
    expect(occurrenceAt(weekend, at(`${friday}T15:59:59+01:00`))).toBeNull();
    expect(occurrenceAt(weekend, at(`${friday}T16:00:00+01:00`))).toEqual(weekendOf9th);
    expect(occurrenceAt(weekend, at("2026-01-11T23:59:00+01:00"))).toEqual(weekendOf9th);
    expect(occurrenceAt(weekend, at("2026-01-12T07:59:59+01:00"))).toEqual(weekendOf9th);
    expect(occurrenceAt(weekend, at("2026-01-12T08:00:00+01:00"))).toBeNull();
    expect(occurrenceAt(weekend, at("2026-01-14T12:00:00+01:00"))).toBeNull();
  });
  test("across midnight: Tue 22:00 to Wed 02:00", () => {
    const night = window({ reason: "backups", every: "Tue 22:00 - Wed 02:00" });
    const o = span("2026-01-13T22:00:00Z", "2026-01-14T02:00:00Z");
    expect(occurrenceAt(night, at("2026-01-13T23:30:00Z"))).toEqual(o);
    expect(occurrenceAt(night, at("2026-01-14T01:59:00Z"))).toEqual(o);
    expect(occurrenceAt(night, at("2026-01-14T02:00:00Z"))).toBeNull();
    expect(occurrenceAt(night, at("2026-01-13T21:59:00Z"))).toBeNull();
  });
  test("across the end of the week, Saturday to Sunday as well as Sunday to Monday", () => {
    const satSun = window({ reason: "r", every: "Sat 12:00 - Sun 12:00" });
    const sunMon = window({ reason: "r", every: "Sun 22:00 - Mon 06:00" });
    expect(occurrenceAt(satSun, at("2026-01-11T00:30:00Z"))).toEqual(
      span("2026-01-10T12:00:00Z", "2026-01-11T12:00:00Z"),
    );
    expect(occurrenceAt(sunMon, at("2026-01-12T00:30:00Z"))).toEqual(
      span("2026-01-11T22:00:00Z", "2026-01-12T06:00:00Z"),
    );
    expect(occurrenceAt(sunMon, at("2026-01-11T21:00:00Z"))).toBeNull();
  });
  test("the same day with an earlier end runs nearly a week; with a later end, part of the day", () => {
    const day = window({ reason: "r", every: "Mon 09:00 - Mon 17:00" });
    const week = window({ reason: "r", every: "Mon 17:00 - Mon 09:00" });
    expect(occurrenceAt(day, at("2026-01-12T12:00:00Z"))).toEqual(span("2026-01-12T09:00:00Z", "2026-01-12T17:00:00Z"));
    expect(occurrenceAt(week, at("2026-01-12T12:00:00Z"))).toBeNull();
    // On its start day, before its start, last week's occurrence is still in force.
    expect(occurrenceAt(week, at("2026-01-12T08:00:00Z"))).toEqual(
      span("2026-01-05T17:00:00Z", "2026-01-12T09:00:00Z"),
    );
    expect(occurrenceAt(week, at("2026-01-15T12:00:00Z"))).toEqual(
      span("2026-01-12T17:00:00Z", "2026-01-19T09:00:00Z"),
    );
  });
  test("nextOccurrences starts with the occurrence in force, then one a week", () => {
    expect(nextOccurrences(weekend, at("2026-01-10T12:00:00+01:00"), 3)).toEqual([
      span("2026-01-09T16:00:00+01:00", "2026-01-12T08:00:00+01:00"),
      span("2026-01-16T16:00:00+01:00", "2026-01-19T08:00:00+01:00"),
      span("2026-01-23T16:00:00+01:00", "2026-01-26T08:00:00+01:00"),
    ]);
    expect(nextOccurrences(weekend, at("2026-01-14T12:00:00+01:00"), 1)).toEqual([
      span("2026-01-16T16:00:00+01:00", "2026-01-19T08:00:00+01:00"),
    ]);
    expect(nextOccurrences(weekend, at("2026-01-14T12:00:00+01:00"), 0)).toEqual([]);
  });
});

describe("a one-off window is in force once, from `from` to `until`", () => {
  const o = span("2026-12-18T12:00:00+01:00", "2027-01-04T08:00:00+01:00");
  test("in force between its ends only", () => {
    expect(occurrenceAt(endOfYear, at("2026-12-18T11:59:00+01:00"))).toBeNull();
    expect(occurrenceAt(endOfYear, at("2026-12-18T12:00:00+01:00"))).toEqual(o);
    expect(occurrenceAt(endOfYear, at("2027-01-01T00:00:00+01:00"))).toEqual(o);
    expect(occurrenceAt(endOfYear, at("2027-01-04T08:00:00+01:00"))).toBeNull();
  });
  test("nextOccurrences lists it until it is over, then nothing", () => {
    expect(nextOccurrences(endOfYear, at("2026-06-01T00:00:00Z"), 3)).toEqual([o]);
    expect(nextOccurrences(endOfYear, at("2026-12-24T00:00:00Z"), 3)).toEqual([o]);
    expect(nextOccurrences(endOfYear, at("2027-01-04T08:00:00+01:00"), 3)).toEqual([]);
  });
});

describe("a cron window runs from a start to the next end", () => {
  test("L is the last day of each month, whatever its length", () => {
    const close = (iso: string) => occurrenceAt(monthlyClose, at(iso));
    expect(close("2026-01-31T20:00:00Z")).toEqual(span("2026-01-31T18:00:00Z", "2026-02-02T09:00:00Z"));
    expect(close("2026-03-01T00:00:00Z")).toEqual(span("2026-02-28T18:00:00Z", "2026-03-02T09:00:00Z"));
    expect(close("2028-02-29T19:00:00Z")).toEqual(span("2028-02-29T18:00:00Z", "2028-03-02T09:00:00Z"));
    expect(close("2026-04-30T17:59:00Z")).toBeNull();
    expect(close("2026-05-02T09:00:00Z")).toBeNull();
  });
  test("nextOccurrences lists the one in force and then one a month", () => {
    expect(nextOccurrences(monthlyClose, at("2026-02-01T00:00:00Z"), 3)).toEqual([
      span("2026-01-31T18:00:00Z", "2026-02-02T09:00:00Z"),
      span("2026-02-28T18:00:00Z", "2026-03-02T09:00:00Z"),
      span("2026-03-31T18:00:00Z", "2026-04-02T09:00:00Z"),
    ]);
  });
  test("starts inside an occurrence change nothing: it runs from the first start after an end", () => {
    // Every evening a start, and one end on Monday morning: frozen from Monday evening to Monday morning.
    const w = window({ reason: "r", start: "0 18 * * *", end: "0 9 * * MON" });
    expect(occurrenceAt(w, at("2026-01-15T12:00:00Z"))).toEqual(span("2026-01-12T18:00:00Z", "2026-01-19T09:00:00Z"));
    expect(occurrenceAt(w, at("2026-01-19T10:00:00Z"))).toBeNull();
  });
  test("a start at the very minute of an end is cancelled by it", () => {
    const w = window({ reason: "r", start: "0 9 * * *", end: "0 9 * * 1" });
    expect(occurrenceAt(w, at("2026-01-12T09:00:00Z"))).toBeNull();
    expect(occurrenceAt(w, at("2026-01-12T12:00:00Z"))).toBeNull();
    expect(nextOccurrences(w, at("2026-01-12T08:00:00Z"), 2)).toEqual([
      span("2026-01-06T09:00:00Z", "2026-01-12T09:00:00Z"),
      span("2026-01-13T09:00:00Z", "2026-01-19T09:00:00Z"),
    ]);
  });
  test("with both day fields restricted a day matching either fires, as in cron; with one starting with *, both", () => {
    const starts = (start: string) =>
      nextOccurrences(window({ reason: "r", start, end: "0 1 * * *" }), at("2026-01-01T00:00:00Z"), 4).map((o) =>
        new Date(o.from).toISOString().slice(0, 10),
      );
    expect(starts("0 0 13 * FRI")).toEqual(["2026-01-02", "2026-01-09", "2026-01-13", "2026-01-16"]);
    expect(starts("0 0 */2 * 5")).toEqual(["2026-01-09", "2026-01-23", "2026-02-13", "2026-02-27"]);
  });
  test("lists, ranges, steps and names select the values they say", () => {
    const w = window({ reason: "r", start: "0,30 9-17/4 * jan-feb,DEC 1-5", end: "59 23 * * *" });
    if (w.rule.kind !== "cron") throw new Error("expected cron");
    expect(w.rule.start.times).toEqual([9 * 60, 9 * 60 + 30, 13 * 60, 13 * 60 + 30, 17 * 60, 17 * 60 + 30]);
    expect(w.rule.start.months.flatMap((on, m) => (on ? [m] : []))).toEqual([1, 2, 12]);
    expect(w.rule.start.weekdays).toEqual([false, true, true, true, true, true, false]);
    const sundays = window({ reason: "r", start: "0 0 * * 7", end: "0 1 * * *" });
    expect(sundays.rule.kind === "cron" && sundays.rule.start.weekdays[0]).toBe(true); // 7 is Sunday too
  });
});

describe("overlapping windows: the one that ends last wins", () => {
  const windows = [weekend, endOfYear];
  test("a weekend inside the end-of-year freeze is frozen until the end of the year", () => {
    const f = freezeOn(windows, "prod", at("2026-12-19T12:00:00+01:00"));
    expect(f?.reason).toBe("end-of-year freeze");
    expect(f?.until).toBe(at("2027-01-04T08:00:00+01:00"));
  });
  test("a one-off window inside a weekend is frozen until the weekend ends", () => {
    const saturday = window({
      reason: "migration",
      from: "2027-01-09 10:00",
      until: "2027-01-10 10:00",
      timezone: BUDAPEST,
    });
    const f = freezeOn([saturday, weekend], "prod", at("2027-01-09T12:00:00+01:00"));
    expect(f?.reason).toBe("weekend");
    expect(f?.until).toBe(at("2027-01-11T08:00:00+01:00"));
  });
  test("with equal ends, the window listed first wins", () => {
    // The last weekend of the freeze ends when the freeze does: Mon 4 January 08:00.
    expect(freezeOn(windows, "prod", at("2027-01-02T12:00:00+01:00"))?.reason).toBe("weekend");
    expect(freezeOn([endOfYear, weekend], "prod", at("2027-01-02T12:00:00+01:00"))?.reason).toBe("end-of-year freeze");
  });
  test("only windows in force count: one that starts as another ends is told of once it starts", () => {
    const first = window({ reason: "first", from: "2026-06-01 08:00", until: "2026-06-01 10:00" });
    const second = window({ reason: "second", from: "2026-06-01 10:00", until: "2026-06-01 12:00" });
    expect(freezeOn([first, second], "prod", at("2026-06-01T09:00:00Z"))).toMatchObject({
      reason: "first",
      until: at("2026-06-01T10:00:00Z"),
    });
    expect(freezeOn([first, second], "prod", at("2026-06-01T10:00:00Z"))?.reason).toBe("second");
    expect(freezeOn([first, second], "prod", at("2026-06-01T12:00:00Z"))).toBeNull();
  });
});

describe("a window freezes the locks it lists and everything under them", () => {
  test("prod covers prod and prod/eu, but not production, staging or the root", () => {
    expect(covers(weekend, "prod")).toBe(true);
    expect(covers(weekend, "prod/eu")).toBe(true);
    expect(covers(weekend, "prod/eu/a")).toBe(true);
    expect(covers(weekend, "production")).toBe(false);
    expect(covers(weekend, "staging")).toBe(false);
    expect(covers(weekend, "")).toBe(false);
  });
  test("a window without locks covers every lock and the root", () => {
    for (const lock of ["", "default", "prod", "staging/a"]) expect(covers(endOfYear, lock)).toBe(true);
  });
  test("freezeOn and nextFreeze pass over windows that do not cover the lock", () => {
    const t = at("2026-01-10T12:00:00+01:00");
    expect(freezeOn([weekend], "prod/eu", t)?.reason).toBe("weekend");
    expect(freezeOn([weekend], "staging", t)).toBeNull();
    expect(nextFreeze([weekend], "staging", t)).toBeNull();
  });
});

describe("nextFreeze is the earliest occurrence starting after t on the lock", () => {
  test("an occurrence already in force is not next; the earliest start among the windows is", () => {
    const t = at("2026-01-10T12:00:00+01:00"); // inside a weekend
    const f = nextFreeze([weekend, monthlyClose], "prod", t);
    expect(f).toMatchObject({ reason: "weekend", ...span("2026-01-16T16:00:00+01:00", "2026-01-19T08:00:00+01:00") });
    const close = nextFreeze([weekend, monthlyClose], "prod", at("2026-04-27T12:00:00Z")); // April ends on a Thursday
    expect(close).toMatchObject({ reason: "monthly close", ...span("2026-04-30T18:00:00Z", "2026-05-02T09:00:00Z") });
  });
  test("a one-off window in the past or in force is never next", () => {
    expect(nextFreeze([endOfYear], "prod", at("2026-12-20T00:00:00Z"))).toBeNull();
    expect(nextFreeze([endOfYear], "prod", at("2026-12-01T00:00:00Z"))?.from).toBe(at("2026-12-18T12:00:00+01:00"));
  });
});

// Europe/Budapest: 29 March 2026 at 02:00 the clock jumps to 03:00 (CET +01 to CEST +02);
// 25 October 2026 at 03:00 it goes back to 02:00, so 02:00–02:59 happens twice.
describe("daylight saving in Europe/Budapest: times are wall-clock times on both sides of a change", () => {
  const night = window({ reason: "r", every: "Sat 22:00 - Sun 06:00", timezone: BUDAPEST });
  test("the night the clocks go forward is an hour shorter", () => {
    expect(occurrenceAt(night, at("2026-03-29T05:00:00+02:00"))).toEqual(
      span("2026-03-28T22:00:00+01:00", "2026-03-29T06:00:00+02:00"), // 7 hours
    );
  });
  test("the night the clocks go back is an hour longer", () => {
    expect(occurrenceAt(night, at("2026-10-25T05:00:00+01:00"))).toEqual(
      span("2026-10-24T22:00:00+02:00", "2026-10-25T06:00:00+01:00"), // 9 hours
    );
  });
  test("a start at a time that does not exist that day starts at the next minute that does (03:00)", () => {
    const w = window({ reason: "r", every: "Sun 02:30 - Sun 04:00", timezone: BUDAPEST });
    expect(nextOccurrences(w, at("2026-03-28T00:00:00Z"), 2)).toEqual([
      span("2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"),
      span("2026-04-05T02:30:00+02:00", "2026-04-05T04:00:00+02:00"),
    ]);
    const once = window({ reason: "r", from: "2026-03-29 02:15", until: "2026-03-29 05:00", timezone: BUDAPEST });
    expect(occurrenceAt(once, at("2026-03-29T03:00:00+02:00"))?.from).toBe(at("2026-03-29T03:00:00+02:00"));
  });
  test("a time that happens twice means the first time (still summer time)", () => {
    const w = window({ reason: "r", every: "Sun 02:30 - Sun 04:00", timezone: BUDAPEST });
    expect(nextOccurrences(w, at("2026-10-24T00:00:00Z"), 1)).toEqual([
      span("2026-10-25T02:30:00+02:00", "2026-10-25T04:00:00+01:00"), // 2 h 30 min
    ]);
    const ending = window({ reason: "r", every: "Sun 01:00 - Sun 02:30", timezone: BUDAPEST });
    expect(occurrenceAt(ending, at("2026-10-25T02:40:00+01:00"))).toBeNull(); // the end is the first 02:30, too
  });
  test("a daily cron keeps its wall-clock time, and one in the gap fires at its end", () => {
    const office = window({ reason: "r", start: "0 9 * * *", end: "0 17 * * *", timezone: BUDAPEST });
    expect(nextOccurrences(office, at("2026-03-28T00:00:00Z"), 2)).toEqual([
      span("2026-03-28T09:00:00+01:00", "2026-03-28T17:00:00+01:00"),
      span("2026-03-29T09:00:00+02:00", "2026-03-29T17:00:00+02:00"),
    ]);
    const gap = window({ reason: "r", start: "30 2 * * *", end: "0 4 * * *", timezone: BUDAPEST });
    expect(occurrenceAt(gap, at("2026-03-29T03:30:00+02:00"))).toEqual(
      span("2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"),
    );
    expect(occurrenceAt(gap, at("2026-10-25T02:45:00+02:00"))).toEqual(
      span("2026-10-25T02:30:00+02:00", "2026-10-25T04:00:00+01:00"),
    );
  });
});

// America/New_York: 8 March 2026 at 02:00 the clock jumps to 03:00 (EST -05 to EDT -04);
// 1 November 2026 at 02:00 it goes back to 01:00, so 01:00–01:59 happens twice.
describe("daylight saving in America/New_York: times are wall-clock times on both sides of a change", () => {
  const night = window({ reason: "r", every: "Sat 22:00 - Sun 06:00", timezone: NEW_YORK });
  test("the night the clocks go forward is an hour shorter", () => {
    expect(occurrenceAt(night, at("2026-03-08T01:00:00-05:00"))).toEqual(
      span("2026-03-07T22:00:00-05:00", "2026-03-08T06:00:00-04:00"),
    );
  });
  test("the night the clocks go back is an hour longer", () => {
    expect(occurrenceAt(night, at("2026-11-01T01:30:00-05:00"))).toEqual(
      span("2026-10-31T22:00:00-04:00", "2026-11-01T06:00:00-05:00"),
    );
  });
  test("a start at a time that does not exist that day starts at the next minute that does (03:00)", () => {
    const w = window({ reason: "r", every: "Sun 02:30 - Sun 05:00", timezone: NEW_YORK });
    expect(occurrenceAt(w, at("2026-03-08T04:00:00-04:00"))).toEqual(
      span("2026-03-08T03:00:00-04:00", "2026-03-08T05:00:00-04:00"),
    );
    const gap = window({ reason: "r", start: "30 2 * * *", end: "0 5 * * *", timezone: NEW_YORK });
    expect(occurrenceAt(gap, at("2026-03-08T04:00:00-04:00"))?.from).toBe(at("2026-03-08T03:00:00-04:00"));
  });
  test("a time that happens twice means the first time (still daylight time)", () => {
    const w = window({ reason: "r", every: "Sun 01:30 - Sun 05:00", timezone: NEW_YORK });
    expect(occurrenceAt(w, at("2026-11-01T01:10:00-05:00"))).toEqual(
      span("2026-11-01T01:30:00-04:00", "2026-11-01T05:00:00-05:00"),
    );
    const once = window({ reason: "r", from: "2026-11-01 01:30", until: "2026-11-01 03:00", timezone: NEW_YORK });
    expect(once.rule).toEqual({ kind: "once", ...span("2026-11-01T01:30:00-04:00", "2026-11-01T03:00:00-05:00") });
  });
});

describe("freezes in words", () => {
  const friday = at("2026-01-09T17:00:00+01:00");
  test("a time within the coming week is its day, clock and zone abbreviation", () => {
    expect(describeLocalTime(at("2026-01-12T08:00:00+01:00"), BUDAPEST, friday)).toBe("Mon 08:00 CET");
    expect(describeLocalTime(at("2026-07-06T08:00:00+02:00"), BUDAPEST, at("2026-07-04T00:00:00Z"))).toBe(
      "Mon 08:00 CEST",
    );
    expect(describeLocalTime(at("2026-01-12T08:00:00-05:00"), NEW_YORK, friday)).toBe("Mon 08:00 EST");
    expect(describeLocalTime(at("2026-07-06T08:00:00-04:00"), NEW_YORK, at("2026-07-04T00:00:00Z"))).toBe(
      "Mon 08:00 EDT",
    );
    expect(describeLocalTime(at("2026-01-12T08:00:00Z"), "UTC", friday)).toBe("Mon 08:00 UTC");
  });
  test("a zone with no English abbreviation is shown by its offset", () => {
    expect(describeLocalTime(at("2026-01-12T08:00:00+05:30"), "Asia/Kolkata", friday)).toBe("Mon 08:00 GMT+5:30");
  });
  test("a time six days or more away, in the past, or without now, has its date as well", () => {
    const end = at("2027-01-04T08:00:00+01:00");
    expect(describeLocalTime(end, BUDAPEST, at("2026-12-20T00:00:00Z"))).toBe("Mon 2027-01-04 08:00 CET");
    expect(describeLocalTime(end, BUDAPEST, end + 1)).toBe("Mon 2027-01-04 08:00 CET");
    expect(describeLocalTime(end, BUDAPEST)).toBe("Mon 2027-01-04 08:00 CET");
  });
  test("a freeze names its lock, when it ends and why", () => {
    const f = freezeOn([weekend], "prod", friday);
    if (f === null) throw new Error("expected a freeze");
    expect(describeFreeze("prod", f, friday)).toBe("releasing on prod is frozen until Mon 08:00 CET (weekend)");
    expect(describeFreeze("prod/eu", f, friday)).toBe("releasing on prod/eu is frozen until Mon 08:00 CET (weekend)");
  });
  test("the default lock and the root go unnamed, as in the original's words", () => {
    const f = freezeOn([endOfYear], "default", at("2026-12-31T12:00:00Z"));
    if (f === null) throw new Error("expected a freeze");
    const now = at("2027-01-01T00:00:00Z");
    expect(describeFreeze("default", f, now)).toBe("releasing is frozen until Mon 08:00 CET (end-of-year freeze)");
    expect(describeFreeze("", f, now)).toBe("releasing is frozen until Mon 08:00 CET (end-of-year freeze)");
  });
});

describe("occurrenceAt and nextOccurrences tell the same story", () => {
  test("minute by minute (every 17) across both changes of a year, in force means inside a listed occurrence", () => {
    const windows = [
      window({ reason: "r", every: "Sat 22:00 - Sun 02:45", timezone: BUDAPEST }),
      window({ reason: "r", start: "*/20 1-3 * * *", end: "10 2 * * *", timezone: NEW_YORK }),
    ];
    for (const w of windows)
      for (const [from, to] of [
        ["2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"],
        ["2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z"],
        ["2026-10-24T00:00:00Z", "2026-10-26T00:00:00Z"],
        ["2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"],
      ] as const) {
        const listed = nextOccurrences(w, at(from) - 7 * 86_400_000, 60);
        for (let t = at(from); t < at(to); t += 17 * 60_000)
          expect([t, occurrenceAt(w, t)]).toEqual([t, listed.find((o) => o.from <= t && t < o.until) ?? null]);
      }
  });
});

// ---------------------------------------------------------------------------
// The cron search against the rule itself. The reference walks the zone's clock
// minute by minute: a cron fires at the first instant the clock shows a time it
// names, or the instant a spring gap that skipped such a time ends; a start runs
// until the next end, and a start at an end's very instant is cancelled by it.
// Slow and plain on purpose: the calendar must jump, and agree with it.

const MINUTE = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
// The state is known from the first end in the span on; the year 2026 is what gets checked.
const SPAN = { from: at("2025-07-01T00:00:00Z"), until: at("2027-01-15T00:00:00Z") };

/** What the zone's clock shows at each minute of the span, in minutes since 1970 as if the zone were UTC. */
function clockReadings(timezone: string): Float64Array {
  const readings = new Float64Array((SPAN.until - SPAN.from) / MINUTE);
  const reading = (t: number) => wallOf(t, timezone) / MINUTE;
  for (let hour = SPAN.from; hour < SPAN.until; hour += HOUR) {
    const first = (hour - SPAN.from) / MINUTE;
    const offset = reading(hour) - hour / MINUTE;
    const steady = reading(hour + HOUR - MINUTE) - (hour + HOUR - MINUTE) / MINUTE === offset;
    for (let i = 0; i < 60; i++)
      readings[first + i] = steady ? (hour + i * MINUTE) / MINUTE + offset : reading(hour + i * MINUTE);
  }
  return readings;
}

/** Whether the cron names a wall time, in minutes since 1970 as if the zone were UTC; `times` has a 1 for each minute of the day it names. */
function namesWallMinute(c: Cron, times: Uint8Array, wallMinute: number): boolean {
  if (times[wallMinute % 1440] !== 1) return false;
  const date = new Date(Math.floor(wallMinute / 1440) * DAY);
  const dayOfMonth = date.getUTCDate();
  const last = new Date(date.getTime() + DAY).getUTCDate() === 1;
  const onDay = c.days[dayOfMonth] === true || (c.lastDay && last);
  const onWeekday = c.weekdays[date.getUTCDay()] === true;
  return c.months[date.getUTCMonth() + 1] === true && (c.eitherDay ? onDay || onWeekday : onDay && onWeekday);
}

/** For each minute of the span, 1 if the cron fires then. */
function firingsByMinute(c: Cron, readings: Float64Array): Uint8Array {
  const times = new Uint8Array(1440);
  for (const m of c.times) times[m] = 1;
  const fired = new Uint8Array(readings.length);
  let shown = (readings[0] ?? 0) - 1; // the latest time the clock has shown: in an autumn fold it shows earlier ones again
  for (let i = 0; i < readings.length; i++) {
    const wall = readings[i] ?? 0;
    // This minute is the first to show its time, and also the times a spring gap skipped just before it.
    for (let m = shown + 1; m <= wall && fired[i] === 0; m++) if (namesWallMinute(c, times, m)) fired[i] = 1;
    shown = Math.max(shown, wall);
  }
  return fired;
}

/** The window's occurrences in the span, from its first end on (before it, whether a start was pending is unknown). */
function occurrencesByMinute(w: Window, readings: Float64Array): Occurrence[] {
  if (w.rule.kind !== "cron") throw new Error("expected a cron window");
  const [starts, ends] = [firingsByMinute(w.rule.start, readings), firingsByMinute(w.rule.end, readings)];
  const found: Occurrence[] = [];
  let known = false;
  let since: number | null = null;
  for (let i = 0; i < readings.length; i++) {
    const t = SPAN.from + i * MINUTE;
    if (ends[i] === 1) {
      if (known && since !== null) found.push({ from: since, until: t });
      since = null; // a start at this very instant is cancelled
      known = true;
    } else if (starts[i] === 1 && since === null) since = t;
  }
  return found;
}

/** The same pseudo-random numbers on every run, so a failure is found again. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

function randomCron(random: () => number): string {
  const int = (n: number) => Math.floor(random() * n);
  const pick = <T>(...choices: T[]): T => choices[int(choices.length)] as T;
  const minute = pick(`${int(60)}`, `${int(60)},${int(60)}`, `${int(50)}-59/${pick(7, 13)}`, `*/${pick(15, 20, 30)}`);
  const hour = pick("*", `${int(24)}`, `${pick(1, 2, 3)}`, `${int(12)},${12 + int(12)}`, `1-3`, `*/${pick(2, 5, 7)}`);
  const day = pick("*", "*", "*", `${1 + int(28)}`, "L", `${1 + int(14)}-${15 + int(16)}`, "*/3", "L,15");
  const month = pick("*", "*", "*", "*", `${1 + int(12)},${1 + int(12)}`, `${1 + int(6)}-${7 + int(6)}`, "*/2");
  const weekday = pick("*", "*", "*", `${int(7)}`, "MON-FRI", "0,6", "SUN", "7");
  return `${minute} ${hour} ${day} ${month} ${weekday}`;
}

describe("the cron search agrees with a minute-by-minute walk of the clock", () => {
  const zones = ["UTC", BUDAPEST, NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata"]; // Lord Howe moves by 30 minutes
  test("next occurrences, the one in force and the last one over, for 60 random cron windows over a year", () => {
    const random = seeded(2026);
    const readings = new Map(zones.map((z) => [z, clockReadings(z)]));
    let windows = 0;
    let compared = 0;
    while (windows < 60) {
      const timezone = zones[windows % zones.length] ?? "UTC";
      const w = parseWindow({ reason: "r", start: randomCron(random), end: randomCron(random), timezone });
      if (typeof w === "string") continue; // never fires, too rarely, or never begins: refused, not searched
      windows++;
      const said = w.rule.kind === "cron" ? `${w.rule.start.text} to ${w.rule.end.text} in ${timezone}` : "";
      const expected = occurrencesByMinute(w, readings.get(timezone) as Float64Array);
      const first = expected[0];
      const known = first ? first.from - 1 : SPAN.until; // from here on the reference is sure
      const within = SPAN.until - known;
      // Walking forward from the first, as the daemon does, and from random moments (the calendar jumps about).
      const listed = nextOccurrences(w, known, Math.min(expected.length, 60));
      expect([said, listed]).toEqual([said, expected.slice(0, 60)]);
      const moments = Array.from({ length: 40 }, () => known + Math.floor(random() * within));
      for (const t of [...moments.slice(0, 25).sort((a, b) => a - b), ...moments.slice(25)]) {
        const later = expected.filter((o) => o.until > t);
        // Only what the reference saw end before the span does: an occurrence running past it is not known.
        const next = nextOccurrences(w, t, Math.min(3, later.length));
        expect([said, t, next]).toEqual([said, t, later.slice(0, 3)]);
        const inForce = later[0] && later[0].from <= t ? later[0] : null;
        if (later.length > 0) expect([said, t, occurrenceAt(w, t)]).toEqual([said, t, inForce]);
        const over = expected.filter((o) => o.until <= t).at(-1);
        if (over) expect([said, t, lastOccurrence(w, t)]).toEqual([said, t, over]);
        compared++;
      }
    }
    expect(compared).toBe(60 * 40);
  });
});
