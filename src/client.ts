// The binary as a client of its own server: `releasestatus run` holds the
// release for exactly as long as a command runs; `status` and `healthcheck` ask.
import { constants } from "node:os";
import { CIS, type Ci, jobToken, keepFresh, NoJobToken } from "./ci-identity.ts";
import { isPool, poolParent } from "./claim.ts";
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { wholeNumber } from "./numbers.ts";
import { print, readSecretFile } from "./terminal.ts";
import { visible } from "./visible.ts";
import { duration } from "./words.ts";

// Exit codes from sysexits.h, so scripts can tell "not now" from "broken".
const EXIT = {
  usage: 64, // EX_USAGE: the command line was wrong
  unavailable: 69, // EX_UNAVAILABLE: the server could not be reached, or answered unexpectedly
  software: 70, // EX_SOFTWARE: the lease was lost while the command ran
  tempFail: 75, // EX_TEMPFAIL: the release could not be had (held, blocked, wait ran out)
  // Beyond sysexits.h: a newest-first lock will not deploy this version, so the pipeline step fails visibly.
  superseded: 79, // a newer version of the same claim took its place in line
  stale: 80, // older than the version released last on the lock
};

const MIN_TTL = 2; // the renewals, the SIGTERM and the SIGKILL must all fit inside one lease
const MAX_TTL = 7 * 24 * 3600; // as the server's

const RUN_HELP = `Usage: releasestatus run [options] -- COMMAND [ARGS...]

Takes the release, runs COMMAND with RS_RELEASE_ID and RS_LOCK (every lock held,
comma-separated) set, renews the lease while it runs, and stops exactly this release
(with --name, for the history) when it ends, however it ends, then says which release
it gave back.

Options:
  --name NAME        who is releasing (default: $USER)
  --reason TEXT      what is released, e.g. v2.3.1
  --version VERSION  the build's version or pipeline number, e.g. v2.3.1 or 4812: a lock whose
                     queue is "newest" deploys only the newest of those waiting (see README)
  --urgent REASON    wait ahead of every non-urgent waiter (needs the urgent right)
  --override REASON  start during a freeze, or older than the last release (needs the override right)
  --wait SECONDS     wait in line up to this long for the release (default: do not wait);
                     meanwhile it says on stderr its place, what holds the lock and since
                     when, and how long that usually takes; Ctrl-C leaves the line
  --ttl SECONDS      lease length, renewed every third of it (default 60, at least 2)
  --lock NAME        the lock to hold, e.g. prod/eu (default: the default lock, as /start uses);
                     repeat it to hold several at once (--lock prod/eu --lock shared-db), and
                     give a pool as NAME/* to take any one free declared child ('devices/*')
  --url URL          the server (default: $RS_URL, else http://127.0.0.1:$RS_PORT, else http://127.0.0.1:8080)
  --token-file FILE  file holding the server's token (default: $RS_TOKEN)
  --oidc CI          instead of a token, the job's OpenID Connect ID token from its CI:
                     github, gitlab (from $RS_ID_TOKEN), circleci or buildkite
  --audience AUD     with --oidc: the audience the server's [[trust]] expects

COMMAND runs in a process group of its own: signals to run (INT, TERM, HUP) go to the
whole group; Ctrl-Z (TSTP) is refused, since a paused run cannot renew. If no renewal
is confirmed within two thirds of the lease (counted from when /start, then the last
confirmed renewal, was sent), the group is sent SIGTERM, and SIGKILL a twelfth of the
lease before the lease could run out on the server. A watchdog in a session of its
own does this even when run is stopped, and kills the group at once if run dies.

Exit codes: COMMAND's own (128+N when a signal ended it); 75 when the release could
not be had; 79 when a newer version took its place in line (superseded); 80 when
it is older than the version released last (stale); 69 when the server cannot be reached or answers unexpectedly; 70 when the
release was lost while COMMAND ran (COMMAND was ended), or was found stopped by
someone else when it finished; 64 for a wrong command line (or one the server
refuses as invalid); 127 when COMMAND cannot be run.
`;

const STATUS_HELP = `Usage: releasestatus status [--lock NAME] [--url URL] [--json]

Prints who holds the release, since when, and who blocked releasing: for lock NAME, or
without --lock for the default lock and then every other lock in use. --json prints the
server's JSON status instead (without --lock, with every lock under "locks").
Exit 69 when the server cannot be reached; 64 when it refuses (no such lock, e.g. RS_LOCKS
without default and no --lock; or a token needed to read).
`;

type Server = { url: string; headers: Record<string, string>; lock: string; more: string[] }; // more: run's other --lock

/** Where an action on the server's lock is: the original's paths for the default lock, /locks/NAME/… for others. */
const at = (server: Server, action: string) =>
  server.lock === "default" ? `/${action}` : `/locks/${server.lock}/${action}`;

class UsageError extends Error {}
class Unavailable extends Error {}

export async function status(args: string[]): Promise<number> {
  try {
    const opts = parseOptions(args, ["lock", "url", "token-file"], ["json", "help"]);
    if (opts.help) return print(STATUS_HELP);
    const server = serverFrom(opts);
    const format = opts.json ? "?format=json" : "";
    const asked = await call(server, `${at(server, "status")}${format}`, 10_000);
    // A lock that is not there (RS_LOCKS without default) or may not be read is no status to print as one.
    if (asked.status >= 400 && asked.status < 500)
      throw new UsageError(
        `${asked.headers.get("x-reason") ?? `the server answered HTTP ${asked.status}`}${asked.headers.get("x-reason-code") === "unknown-lock" ? ": name one with --lock NAME" : ""}`,
      );
    const own = await asked.text();
    if (opts.lock !== undefined) return print(own);
    const all = await (await call(server, `/locks${format}`, 10_000)).text();
    if (opts.json) return print(JSON.stringify({ ...JSON.parse(own), locks: JSON.parse(all) }));
    // Each line of /locks is `WORD: LOCK: what`; the default lock's is the status printed above.
    const others = all.split("\n").filter((line) => line && line.split(": ")[1] !== "default");
    return print(others.length ? `${own}\nother locks:\n${others.join("\n")}\n` : own);
  } catch (e) {
    return failure(e, "status");
  }
}

const BACKUP_HELP = `Usage: releasestatus backup FILE [--url URL] [--token-file FILE]

Writes a consistent copy of the daemon's SQLite database to FILE (which must not exist yet),
taken inside the running daemon: the database itself is locked against other programs.
Exit 69 when the server cannot be reached or has no copy to give (memory, PostgreSQL).
`;

export async function backup(args: string[]): Promise<number> {
  try {
    const file = args[0]?.startsWith("-") ? undefined : args[0];
    const opts = parseOptions(file === undefined ? args : args.slice(1), ["url", "token-file"], ["help"]);
    if (opts.help) return print(BACKUP_HELP);
    if (!file) throw new UsageError("no FILE given: releasestatus backup releasestatus-backup.db");
    const { existsSync, renameSync } = require("node:fs") as typeof import("node:fs");
    if (existsSync(file))
      throw new UsageError(`${file} exists already: choose a new file, so that no copy is overwritten`);
    const server = serverFrom(opts);
    const res = await call(server, "/backup", 60_000);
    if (!res.ok) throw new Unavailable(`the server answered HTTP ${res.status}: ${res.headers.get("x-reason") ?? ""}`);
    const partial = `${file}.partial`;
    await Bun.write(partial, res);
    renameSync(partial, file); // complete or not there at all
    return print(`wrote ${file}`);
  } catch (e) {
    return failure(e, "backup");
  }
}

export async function healthcheck(): Promise<number> {
  const port = process.env.RS_PORT || "8080";
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(3000) });
    console.log(`${res.status} ${(await res.text()).trimEnd()}`);
    return res.ok ? 0 : 1;
  } catch (e) {
    console.error(`releasestatus healthcheck: cannot reach 127.0.0.1:${port}: ${(e as Error).message}`);
    return 1;
  }
}

export async function run(args: string[]): Promise<number> {
  let server: Server;
  let command: string[];
  let ttl: number;
  let query: URLSearchParams;
  let signals: { dispose: () => void } | null = null;
  let watchdog: Watchdog | null = null;
  let stopRefreshing = () => {};
  try {
    const split = args.indexOf("--");
    const opts = parseOptions(
      split < 0 ? args : args.slice(0, split),
      [
        "name",
        "reason",
        "version",
        "urgent",
        "override",
        "wait",
        "ttl",
        "lock",
        "url",
        "token-file",
        "oidc",
        "audience",
      ],
      ["help"],
    );
    if (opts.help) return print(RUN_HELP);
    const oidc = ciOption(opts);
    command = split < 0 ? [] : args.slice(split + 1);
    if (command.length === 0)
      throw new UsageError("no command given: put it after --, e.g. releasestatus run -- ./deploy.sh");
    ttl = seconds(opts.ttl, "--ttl", 60, MIN_TTL, MAX_TTL);
    const wait = seconds(opts.wait, "--wait", 0, 0, MAX_TTL);
    server = serverFrom(opts);
    if (oidc) stopRefreshing = await useJobToken(server, oidc);
    query = new URLSearchParams({
      name: String(opts.name ?? process.env.USER ?? ""),
      reason: String(opts.reason ?? ""),
    });
    for (const key of ["version", "urgent", "override"])
      if (typeof opts[key] === "string") query.set(key, opts[key] as string);
    query.set("ttl", String(ttl));
    if (wait > 0) query.set("wait", String(wait));
    query.set("format", "json");
    for (const more of server.more) query.append("lock", more);
    const abort = new AbortController();
    // One set of handlers for the whole of run, never removed while it runs: a signal that came while
    // none was installed would end run at once, leaving its release (and perhaps its command) behind.
    const pending: NodeJS.Signals[] = [];
    let onSignal: (signal: NodeJS.Signals) => void = () => abort.abort(); // Ctrl-C while waiting leaves the line
    signals = onSignals((signal) => onSignal(signal));
    watchdog = await startWatchdog(); // before the release is asked for: nothing may hold it unguarded
    const sentAt = performance.now(); // the first lease is counted from here: the server grants it later
    const waiting = wait > 0 ? sayWhileWaiting(server, query) : null;
    const res = await call(server, `${at(server, "start")}?${query}`, (wait + 30) * 1000, abort.signal)
      .catch((e) => {
        if (e instanceof Interrupted)
          console.error(`releasestatus run: interrupted: left the line for ${theLock(server)}; nothing was held`);
        throw e;
      })
      .finally(() => waiting?.stop());
    onSignal = (signal) => pending.push(signal); // until the command runs, then handed on to it
    const answer = (await res.json().catch(() => null)) as {
      ok: boolean;
      reason: string;
      message: string;
      releaseId?: number;
      lock?: string;
      locks?: string[];
    } | null;
    if (answer && !answer.ok && res.status === 400) throw new UsageError(`the server refused it: ${answer.message}`);
    if (!answer || (!answer.ok && res.status !== 200))
      throw new Unavailable(`the server answered HTTP ${res.status}: ${answer?.message ?? "not the JSON expected"}`);
    if (!answer.ok) {
      console.error(`releasestatus run: not releasing (${answer.reason}): ${answer.message}`);
      return answer.reason === "superseded" ? EXIT.superseded : answer.reason === "stale" ? EXIT.stale : EXIT.tempFail;
    }
    // Renewed and stopped on the first lock it holds (a pool's child, not the pool), which is the whole release.
    const held = { ...server, lock: answer.lock ?? server.lock };
    const locks = answer.locks ?? [held.lock];
    const release = { id: answer.releaseId ?? 0, name: query.get("name") ?? "", sentAt, locks };
    return await holdWhileRunning(held, release, ttl, command, watchdog, (forward) => {
      onSignal = forward;
      for (const signal of pending.splice(0)) forward(signal);
    });
  } catch (e) {
    return failure(e, "run");
  } finally {
    stopRefreshing();
    watchdog?.done();
    signals?.dispose();
  }
}

/** --oidc CI and --audience AUD, checked: the job's ID token stands in for a stored token. */
function ciOption(opts: Record<string, string | boolean | undefined>): { ci: Ci; audience: string } | null {
  if (opts.oidc === undefined && opts.audience === undefined) return null;
  const ci = opts.oidc as Ci | undefined;
  if (!ci || !CIS.includes(ci))
    throw new UsageError(`--oidc ${ci ?? ""} is not valid: expected github, gitlab, circleci or buildkite`);
  if (typeof opts.audience !== "string" || opts.audience === "")
    throw new UsageError("--oidc needs --audience: the audience the server's [[trust]] expects, e.g. its URL");
  if (opts["token-file"] !== undefined || process.env.RS_TOKEN)
    throw new UsageError("--oidc and a token (RS_TOKEN, --token-file) are both given: keep one");
  return { ci, audience: opts.audience };
}

async function useJobToken(server: Server, { ci, audience }: { ci: Ci; audience: string }): Promise<() => void> {
  let token: string;
  try {
    token = await jobToken(ci, audience);
  } catch (e) {
    if (e instanceof NoJobToken) throw new UsageError(`--oidc ${ci}: ${e.message}`);
    throw e;
  }
  server.headers.Authorization = `Bearer ${token}`;
  return keepFresh(ci, audience, server.headers, token);
}

const theLock = (server: Server) => (server.lock === "default" ? "the release" : server.lock);
const ordinal = (n: number) =>
  `${n}${n % 100 >= 11 && n % 100 <= 13 ? "th" : (["th", "st", "nd", "rd"][n % 10] ?? "th")}`;

type WaitingStatus = {
  queue: { name: string; reason: string; since: string }[];
  stoppedBy?: { message: string }[];
  estimate: { typicalSeconds: number; expectedAt: string } | null;
};

/**
 * While run waits in line (its /start?wait= is one long request), a second look at the status says where it
 * is: its place, what holds the lock and since when, how long that usually takes. Said once a wait has lasted
 * a second (a free lock answers before), then again only when the words change.
 */
function sayWhileWaiting(server: Server, query: URLSearchParams): { stop: () => void } {
  const [name, reason] = [query.get("name") ?? "", query.get("reason") ?? ""];
  let mine: string | null = null; // when run joined the line, as the server has it: its place from then on
  let said = "";
  let stopped = false;
  const look = async () => {
    const s = (await (await call(server, `${at(server, "status")}?format=json`, 5000)).json()) as WaitingStatus;
    mine ??= s.queue.findLast((w) => w.name === name && w.reason === reason)?.since ?? null;
    const place = s.queue.findIndex((w) => w.since === mine && w.name === name);
    const where = place < 0 ? "" : ` (${ordinal(place + 1)} of ${s.queue.length} in line)`;
    const holds = (s.stoppedBy ?? []).map((stop) => stop.message).join("; ") || "others ahead in line";
    const usual = s.estimate
      ? `; usually takes ${duration(s.estimate.typicalSeconds * 1000)}, expected to end around ${s.estimate.expectedAt}`
      : "";
    const words = `waiting for ${theLock(server)}${where}: ${holds}${usual}`;
    if (stopped || words === said) return;
    said = words;
    console.error(`releasestatus run: ${visible(words)}`); // names and reasons come from others
  };
  // A look, then the next one WAIT_WORDS_EVERY_MS after it ends (a slow server is not asked twice at once).
  let timer: ReturnType<typeof setTimeout>;
  const lookIn = (ms: number) => {
    timer = setTimeout(() => {
      look()
        .catch(() => {}) // a look that fails says nothing; the wait itself goes on
        .finally(() => {
          if (!stopped) lookIn(WAIT_WORDS_EVERY_MS);
        });
    }, ms);
  };
  lookIn(1000);
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
const WAIT_WORDS_EVERY_MS = 5000;

/**
 * Runs the command while renewing the lease; stops the release however the command ends. `sentAt`: when
 * its /start was sent, on the monotonic clock.
 */
async function holdWhileRunning(
  server: Server,
  release: { id: number; name: string; sentAt: number; locks: string[] },
  ttl: number,
  command: string[],
  watchdog: Watchdog,
  forwardSignals: (forward: (signal: NodeJS.Signals) => void) => void,
): Promise<number> {
  const { id, sentAt, locks } = release;
  let pgid = 0; // the command's process group, once it runs
  const group = (signal: NodeJS.Signals) => {
    try {
      if (pgid > 1) process.kill(-pgid, signal);
    } catch {} // the group is gone already
  };
  let lost: string | null = null;
  let ours = true; // false once the server refused the lease, or it may have run out: then it is not stopped
  const lose = (why: string, then: string) => {
    if (lost) return;
    lost = why;
    console.error(`releasestatus run: lost release #${id}: ${why}; ${then}`);
  };
  // Ends the command at once: the release is gone, or nothing would end the command in time if run stopped.
  const end = (why: string) => {
    lose(why, "sending the command SIGTERM");
    group("SIGTERM");
    setTimeout(() => group("SIGKILL"), 10_000).unref(); // a command that ignores SIGTERM
  };
  watchdog.exited.then(() => end("the watchdog ended, so nothing would end the command in time if run stopped"));
  const lease = keepLease(server, id, ttl, sentAt, {
    confirmed: (deadline) => watchdog.until(deadline),
    refused: (why) => {
      ours = false;
      end(why);
    },
    // The watchdog sends the SIGTERM and the SIGKILL, on time even if this process is stopped.
    lapsed: (why) => {
      ours = false;
      lose(why, "the command is sent SIGTERM, and SIGKILL before the lease could run out");
    },
  });
  // An answer heard late (after a wait in line, say) leaves less of the first lease: renew before running.
  if (performance.now() - sentAt >= (ttl * 1000) / 3) await lease.renew();
  let code = 0;
  let child: ReturnType<typeof Bun.spawn> | null = null;
  if (!lost) {
    try {
      child = Bun.spawn(command, {
        stdio: ["inherit", "inherit", "inherit"],
        env: { ...process.env, RS_RELEASE_ID: String(id), RS_LOCK: locks.join(",") },
        detached: true, // a session and process group of its own: signals reach the command's children too
      });
    } catch (e) {
      console.error(`releasestatus run: cannot run ${command[0]}: ${(e as Error).message}`);
      code = 127;
    }
  }
  if (child) {
    pgid = child.pid;
    watchdog.guard(pgid);
    forwardSignals(group); // the command decides how to end
    code = await child.exited;
    group("SIGKILL"); // nothing the command started may go on without the release
    // The watchdog's clock may have reached the deadline a moment before this one's: if it ended the command,
    // the lease lapsed, whatever the command's own exit code says.
    if (!lost && (await watchdog.acted())) {
      ours = false;
      lose(
        `no renewal reached the server for ${ttl}s of lease`,
        "the watchdog ended the command before the lease could run out",
      );
    }
  }
  lease.stop();
  watchdog.done();
  const stopped = ours ? await stopRelease(server, release) : null;
  if (lost) return EXIT.software;
  if (stopped) {
    console.error(`releasestatus run: lost release #${id} before the command finished: ${stopped}`);
    return EXIT.software;
  }
  const signal = child?.signalCode as NodeJS.Signals | null | undefined;
  return signal ? 128 + (constants.signals[signal] ?? 0) : code;
}

/**
 * When the command must end, on this process's monotonic clock, given when the last confirmed
 * renewal (or the start) was SENT: the server counts the lease from when it arrived, which is later.
 * Two thirds of the lease without a confirmation: SIGTERM. A twelfth of the lease (at least a second
 * when the lease allows it) before the lease could run out on the server: SIGKILL, so the group is dead
 * before anyone else can be granted, even on a busy machine where a timer fires late.
 */
type Deadline = { term: number; kill: number };
const deadlineFrom = (sentAt: number, lease: number): Deadline => ({
  term: sentAt + (lease * 2) / 3,
  kill: sentAt + lease - Math.max(lease / 12, Math.min(1000, lease / 4)),
});

/**
 * Renews every third of the lease; each confirmation moves the deadline (told to the watchdog). A
 * refusal (wrong-id) means the release is gone already; a deadline passed means it may soon be.
 */
function keepLease(
  server: Server,
  id: number,
  ttl: number,
  startSentAt: number,
  on: { confirmed: (deadline: Deadline) => void; refused: (why: string) => void; lapsed: (why: string) => void },
) {
  const lease = ttl * 1000;
  let confirmedSentAt = startSentAt;
  let done = false;
  const every = lease / 3;
  on.confirmed(deadlineFrom(confirmedSentAt, lease));
  const check = () => {
    const since = performance.now() - confirmedSentAt;
    if (!done && performance.now() >= deadlineFrom(confirmedSentAt, lease).term) {
      done = true;
      on.lapsed(
        `no renewal reached the server for ${ttl}s of lease (the last confirmed one was sent ${(since / 1000).toFixed(1)}s ago), so the command is ended before the lease can run out`,
      );
    }
  };
  const renew = async () => {
    const sentAt = performance.now();
    try {
      const res = await call(server, `${at(server, "renew")}?id=${id}&ttl=${ttl}&format=json`, Math.min(every, 5000));
      const answer = (await res.json()) as { ok: boolean; reason: string; message: string };
      check(); // heard after the deadline: the watchdog has acted on it already
      if (done) return;
      if (answer.ok && sentAt > confirmedSentAt) {
        confirmedSentAt = sentAt;
        on.confirmed(deadlineFrom(confirmedSentAt, lease));
      } else if (!answer.ok && answer.reason === "wrong-id") {
        done = true;
        on.refused(answer.message);
      }
    } catch {}
  };
  const renewals = setInterval(renew, every);
  const watch = setInterval(check, Math.min(100, lease / 24));
  return {
    renew,
    stop: () => {
      check(); // the command may have ended by the watchdog's hand before this process looked
      done = true;
      clearInterval(renewals);
      clearInterval(watch);
    },
  };
}

/** Stops exactly this release; says why when it was no longer running (someone stopped it, or it expired). */
async function stopRelease(
  server: Server,
  { id, name, sentAt }: { id: number; name: string; sentAt: number },
): Promise<string | null> {
  // With its name, so that the history says who ended it.
  const query = new URLSearchParams({ id: String(id), name, format: "json" });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const res = await call(server, `${at(server, "stop")}?${query}`, 5000);
      const answer = (await res.json().catch(() => null)) as { ok: boolean; reason: string; message: string } | null;
      if (answer && !answer.ok && (answer.reason === "wrong-id" || answer.reason === "not-running"))
        return answer.message;
      // Said also after Ctrl-C: the person who pressed it learns the release is free for the next one.
      if (answer?.ok)
        console.error(`releasestatus run: gave back release #${id} after ${duration(performance.now() - sentAt)}`);
      return null;
    } catch {
      await Bun.sleep(500);
    }
  }
  console.error(`releasestatus run: could not stop release #${id}; its lease will end it`);
  return null;
}

/**
 * A small process (this binary, in a hidden mode), in a session of its own so that neither the
 * terminal's job control (Ctrl-Z, Ctrl-C) nor a signal to run's group reaches it. It holds the
 * deadline of the last confirmed renewal and ends the command's group on time by itself, so a run
 * that is stopped (SIGSTOP), starved or killed cannot leave the command going without the release;
 * and if run dies by any means, even kill -9, the pipe closes and it kills the group at once.
 */
type Watchdog = {
  until: (deadline: Deadline) => void;
  acted: () => Promise<boolean>; // whether it sent the command SIGTERM or SIGKILL
  guard: (pgid: number) => void;
  done: () => void;
  exited: Promise<unknown>; // before done: the command has lost its guard
};

async function startWatchdog(): Promise<Watchdog> {
  const self = process.execPath;
  const script = Bun.main.endsWith(".ts") ? [Bun.main] : []; // run from source: bun index.ts
  const dog = Bun.spawn([self, ...script, WATCHDOG], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
    detached: true,
  });
  let finished = false;
  const send = (line: string) => {
    try {
      dog.stdin.write(`${line}\n`);
      dog.stdin.flush();
    } catch {} // it is gone: `exited` says so
  };
  // Each process has its own monotonic clock. One round trip lines them up: the watchdog read its clock
  // somewhere between asking and hearing, and taking it as read when heard can only move deadlines earlier.
  const ask = async (question: string): Promise<string> => {
    send(question);
    const reader = dog.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    return value ? new TextDecoder().decode(value).trim() : "";
  };
  const offset = Number((await ask("clock")) || Number.NaN) - performance.now();
  if (!Number.isFinite(offset))
    throw new Unavailable("the watchdog did not start, so the command could not be guarded");
  return {
    until: ({ term, kill }) => send(`until ${term + offset} ${kill + offset}`),
    guard: (pgid) => send(`guard ${pgid}`),
    acted: async () => (await ask("acted")) === "yes",
    done: () => {
      if (finished) return;
      finished = true;
      send("done");
      try {
        dog.stdin.end();
      } catch {}
    },
    exited: dog.exited.then(() => {
      if (!finished) return;
      return new Promise(() => {}); // ended as asked: nothing to say
    }),
  };
}

export const WATCHDOG = "__watchdog";

/**
 * The watchdog's own life. Lines from run: "clock" (answered with this process's clock), "until TERM KILL"
 * (the deadline, on this clock), "guard PGID" (the command's group), "acted" (answered yes once it has sent
 * the group a signal for the deadline), "done". At TERM the group gets
 * SIGTERM, at KILL SIGKILL; when the pipe ends before "done", run is gone: SIGKILL at once.
 */
export async function watchdog(): Promise<number> {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGTSTP"] as const) process.on(signal, () => {}); // outlive run's
  let pgid = 0;
  const run = process.ppid; // run, which started this process (a session of its own keeps the parent)
  let deadline: Deadline = { term: Number.POSITIVE_INFINITY, kill: Number.POSITIVE_INFINITY };
  let termed = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const group = (signal: NodeJS.Signals) => {
    // run may be stopped between starting the command and saying its group: the command's group is then
    // found as run's child's, so that it is never left running unguarded.
    // Only while run lives (this process has not been handed to another parent): its pid is not yet anyone else's.
    const groups = pgid > 1 ? [pgid] : process.ppid === run ? groupsOfChildren(run) : [];
    for (const g of groups)
      try {
        process.kill(-g, signal);
      } catch {} // the group is gone already
  };
  const enforce = () => {
    clearTimeout(timer);
    const now = performance.now();
    if (now >= deadline.kill) {
      termed = true;
      return group("SIGKILL");
    }
    if (now >= deadline.term && !termed) {
      termed = true;
      group("SIGTERM");
    }
    const next = termed ? deadline.kill : deadline.term;
    if (Number.isFinite(next)) timer = setTimeout(enforce, Math.max(0, next - now));
  };
  let text = "";
  for await (const chunk of Bun.stdin.stream()) {
    text += new TextDecoder().decode(chunk);
    const lines = text.split("\n");
    text = lines.pop() ?? "";
    for (const line of lines) {
      const [word, a, b] = line.split(" ");
      if (word === "done") return 0;
      if (word === "clock") console.log(performance.now());
      if (word === "acted") console.log(termed ? "yes" : "no");
      if (word === "guard") pgid = Number(a);
      if (word === "until") deadline = { term: Number(a), kill: Number(b) };
      enforce();
    }
  }
  group("SIGKILL");
  return 0;
}

// The process groups of a process's children, other than this one (Linux's /proc; elsewhere none are found).
function groupsOfChildren(parent: number): number[] {
  const { readdirSync, readFileSync } = require("node:fs") as typeof import("node:fs");
  const groups = new Set<number>();
  let pids: string[] = [];
  try {
    pids = readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  } catch {}
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    try {
      // After the command's name, in parentheses (which may hold anything): state, parent, group.
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const [, ppid, pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) === parent && Number(pgrp) > 1) groups.add(Number(pgrp));
    } catch {} // gone meanwhile
  }
  return [...groups];
}

async function call(server: Server, path: string, timeoutMs: number, signal?: AbortSignal): Promise<Response> {
  const signals = [AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])];
  const method = /\/(status|locks|backup)(\?|$)/.test(path) ? "GET" : "POST";
  try {
    return await fetch(server.url + path, { method, headers: server.headers, signal: AbortSignal.any(signals) });
  } catch (e) {
    if (signal?.aborted) throw new Interrupted();
    throw new Unavailable(`cannot reach ${server.url}: ${(e as Error).message}`);
  }
}

class Interrupted extends Error {}

function onSignals(handler: (signal: NodeJS.Signals) => void) {
  const names: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const listeners = names.map((name) => {
    const listener = () => handler(name);
    process.on(name, listener);
    return [name, listener] as const;
  });
  // Ctrl-Z would stop run alone (the command has a session of its own): its lease would lapse and the
  // command be killed mid-deploy by the watchdog. Pausing a deploy is refused instead; it runs on.
  const refuseSuspend = () =>
    console.error(
      "releasestatus run: Ctrl-Z is refused: a paused run cannot renew its lease, so the command would be killed mid-deploy; it runs on (Ctrl-C ends it)",
    );
  process.on("SIGTSTP", refuseSuspend);
  listeners.push(["SIGTSTP", refuseSuspend]);
  return {
    dispose: () => {
      for (const [name, listener] of listeners) process.off(name, listener);
    },
  };
}

function serverFrom(opts: Options): Server {
  const url = String(opts.url ?? process.env.RS_URL ?? `http://127.0.0.1:${process.env.RS_PORT || "8080"}`).replace(
    /\/+$/,
    "",
  );
  if (!/^https?:\/\/[^/]+$/.test(url))
    throw new UsageError(`--url ${url} is not valid: expected e.g. http://releases:8080`);
  const [lock = "default", ...more] = typeof opts.lock === "string" ? [opts.lock, ...(opts.locks ?? [])] : [];
  for (const name of [lock, ...more])
    if (!validLockName(isPool(name) ? poolParent(name) : name))
      throw new UsageError(`--lock ${name} is not a lock name (or pool, NAME/*): ${LOCK_NAME_RULE}`);
  let token = process.env.RS_TOKEN ?? null;
  if (typeof opts["token-file"] === "string") {
    const read = readSecretFile(opts["token-file"]);
    if (!read.ok) throw new UsageError(`cannot read --token-file ${opts["token-file"]}: ${read.code}`);
    token = read.secret;
  }
  return { url, headers: token ? { Authorization: `Bearer ${token}` } : {}, lock, more };
}

type Options = Record<string, string | boolean | undefined> & { locks?: string[] }; // locks: --lock after the first

function parseOptions(args: string[], valued: string[], flags: string[]): Options {
  const opts: Options = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const [key, inline] = arg.startsWith("--") ? arg.slice(2).split(/=(.*)/s, 2) : [arg, undefined];
    if (key === "h" || arg === "-h") opts.help = true;
    else if (flags.includes(key as string)) opts[key as string] = true;
    else if (valued.includes(key as string)) {
      const value = inline ?? args[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      if (key === "lock" && opts.lock !== undefined) opts.locks = [...(opts.locks ?? []), value];
      else opts[key as string] = value;
    } else throw new UsageError(`unknown option ${arg}: see --help`);
  }
  return opts;
}

function seconds(raw: string | boolean | undefined, name: string, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const n = typeof raw === "string" ? wholeNumber(raw, min, max) : null;
  if (n === null)
    throw new UsageError(`${name} ${raw} is not valid: expected a whole number of seconds from ${min} to ${max}`);
  return n;
}

function failure(e: unknown, command: string): number {
  if (e instanceof Interrupted) return 130;
  const code = e instanceof UsageError ? EXIT.usage : e instanceof Unavailable ? EXIT.unavailable : null;
  if (code === null) throw e;
  console.error(`releasestatus ${command}: ${visible((e as Error).message)}`); // it may quote an argument
  return code;
}
