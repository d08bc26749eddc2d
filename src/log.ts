// Log lines on stdout that read as documentation: one per state change, and
// refusals too, but rate-limited so a flood of them can neither fill a disk
// nor slow the daemon.

export type LogFormat = "text" | "json";
type Fields = Record<string, string | number | boolean | null>;

const REFUSALS_PER_SECOND = 5; // logged one by one; the rest are counted
const SUMMARY_EVERY_MS = 10_000;

export function createLog(format: LogFormat) {
  // Lines are written together once per turn of the event loop, not one write each: under load a
  // synchronous write per change cost a fifth of a change's CPU. A line never waits for more than
  // that turn, and whatever is pending is written when the process exits.
  let pending: string[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    const lines = pending.join("\n");
    pending = [];
    console.log(lines); // not process.stdout: its Node stream machinery adds ~9 ms to start-up
  };
  process.on("exit", flush);
  // Fields go only into JSON lines: given as a function, they are not even built for text.
  const write = (level: "info" | "warn" | "error", msg: string, fields: Fields | (() => Fields) = {}) => {
    const time = new Date().toISOString();
    const line =
      format === "json"
        ? JSON.stringify({ time, level, msg, ...(typeof fields === "function" ? fields() : fields) })
        : `${time} ${level === "info" ? "" : `${level}: `}${msg}`;
    if (pending.push(line) === 1) setImmediate(flush);
  };

  let windowStart = 0;
  let inWindow = 0;
  let suppressed: Record<string, number> = {};
  let summaryTimer: Timer | null = null;
  const summarise = () => {
    const counts = Object.entries(suppressed);
    const total = counts.reduce((n, [, c]) => n + c, 0);
    const detail = counts.map(([r, c]) => `${r}: ${c}`).join(", ");
    write(
      "info",
      `refused ${total} more requests in the last ${SUMMARY_EVERY_MS / 1000}s without logging each (${detail})`,
      {
        event: "refusals-suppressed",
        count: total,
      },
    );
    suppressed = {};
    summaryTimer = null;
  };

  return {
    info: (msg: string, fields?: Fields | (() => Fields)) => write("info", msg, fields),
    warn: (msg: string, fields?: Fields) => write("warn", msg, fields),
    error: (msg: string, fields?: Fields) => write("error", msg, fields),
    /** `describe` is only called for the refusals that are logged one by one. */
    refusal(reason: string, describe: () => string) {
      const now = Date.now();
      if (now - windowStart >= 1000) {
        windowStart = now;
        inWindow = 0;
      }
      if (++inWindow <= REFUSALS_PER_SECOND) return write("info", describe(), { event: "refused", reason });
      suppressed[reason] = (suppressed[reason] ?? 0) + 1;
      if (summaryTimer === null) {
        summaryTimer = setTimeout(summarise, SUMMARY_EVERY_MS);
        summaryTimer.unref();
      }
    },
  };
}

export type Log = ReturnType<typeof createLog>;
