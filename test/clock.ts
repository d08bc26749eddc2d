// Time for the specifications: a clock that starts at T0 and moves only when the
// test moves it, so nothing sleeps. The engine, the calendar and webhook delivery
// all take it in place of the system clock.
import type { Clock } from "../src/engine.ts";

export const T0 = Date.parse("2026-11-27T09:00:00Z");

export /** A clock that moves only when the test moves it; due timers run in order, each awaited. */
function testClock() {
  let now = T0;
  let timers: { at: number; run: () => unknown }[] = [];
  const clock: Clock & { advance(ms: number): Promise<void>; jump(ms: number): void } = {
    now: () => now,
    after(ms, run) {
      const timer = { at: now + Math.max(ms, 0), run };
      timers.push(timer);
      return () => {
        timers = timers.filter((t) => t !== timer);
      };
    },
    jump(ms) {
      now += ms; // time passes, but no timer has fired yet
    },
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        const due = timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at)[0];
        if (!due) break;
        timers = timers.filter((t) => t !== due);
        now = due.at;
        await due.run();
      }
      now = end;
    },
  };
  return clock;
}
