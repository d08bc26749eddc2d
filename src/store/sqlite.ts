// State and history in an SQLite file that this daemon alone holds, written
// with full synchronous commits so that every answer of 1 survives a crash.
import { Database } from "bun:sqlite";
import { dirname, resolve } from "node:path";
import { DEFAULT_LOCK, type Event, STORAGE_FAILED } from "../release.ts";
import { iso } from "../words.ts";
import {
  ancestorsOf,
  type CountNames,
  catchUp,
  type Decide,
  type Decision,
  decideInLine,
  type EventRow,
  eventLocks,
  forgets,
  LocalWaitLine,
  type LockRow,
  onlyQueueEvents,
  type Progress,
  queueEvent,
  readClaim,
  type Store,
  type Stored,
  StoreOpenError,
  type TransactOptions,
  toColumns,
  toEvent,
  toStored,
} from "./store.ts";
import { lostFrames } from "./wal.ts";

const APPLICATION_ID = 0x52537431; // "RSt1" in the file header marks the file as ours
// After a log whose last commit was lost, ids go on this far ahead: one group commit grants far fewer, so no
// id the lost commit handed out (a fencing token a deploy may hold) is handed out again.
const IDS_SKIPPED = 10_000;
const HARMLESS_WRITE = "UPDATE lock SET last_id = last_id WHERE name = ''"; // proves the file can be written
const SQLITE_FCNTL_NULL_IO = 43; // sqlite3.h: the connection no longer reads or writes the file (not in bun:sqlite's constants)
const SQLITE_FCNTL_PERSIST_WAL = 10; // sqlite3.h: the write-ahead log is not deleted when the connection closes

// Each entry brings the schema from version i to i+1; never edit one that has shipped.
const MIGRATIONS = [
  `CREATE TABLE lock (
     name TEXT PRIMARY KEY,
     last_id INTEGER NOT NULL,
     release_id INTEGER, holder TEXT, release_reason TEXT, started_at INTEGER, expires_at INTEGER,
     blocked_by TEXT, block_reason TEXT, blocked_since INTEGER
   );
   CREATE TABLE events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     lock TEXT NOT NULL,
     at INTEGER NOT NULL,
     kind TEXT NOT NULL,
     release_id INTEGER,
     name TEXT NOT NULL,
     reason TEXT NOT NULL
   );
   INSERT INTO lock (name, last_id) VALUES ('default', 0);`,
  // version: grows with every change to a lock, so that a newer state is never overwritten by an older one
  `ALTER TABLE lock ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
   CREATE INDEX events_by_lock ON events (lock, seq);`,
  // Named locks in a tree: the root ('') holds the one id counter, and the block the original's /block
  // made, which blocked everything; the default lock keeps its release and its history.
  `INSERT INTO lock (name, last_id, blocked_by, block_reason, blocked_since)
     SELECT '', last_id, blocked_by, block_reason, blocked_since FROM lock WHERE name = 'default';
   UPDATE lock SET blocked_by = NULL, block_reason = NULL, blocked_since = NULL WHERE name = 'default';`,
  // Named tokens: whose token started a release, made a block, or made an event (NULL: no named token).
  `ALTER TABLE lock ADD COLUMN release_by TEXT;
   ALTER TABLE lock ADD COLUMN block_by TEXT;
   ALTER TABLE events ADD COLUMN made_by TEXT;`,
  // The freeze calendar: each boundary of a window on a lock, once recorded (frozen, thawed).
  `CREATE TABLE freeze_marks (
     window_key TEXT NOT NULL, lock TEXT NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL,
     PRIMARY KEY (window_key, lock, kind, at)
   ) WITHOUT ROWID;`,
  // Webhooks: how far each has got through the events (the events are the outbox).
  `CREATE TABLE webhooks (
     key TEXT PRIMARY KEY, delivered INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
     next_at INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0
   );`,
  // After a failed write, a write as large as a change's goes here each second, to learn when changes can be saved.
  `CREATE TABLE storage_probe (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);`,
  // What the lock is after each event, as webhooks say it (sent later, when the lock may have changed again).
  `ALTER TABLE events ADD COLUMN status TEXT;`,
  // Lock names that hold nothing are forgotten (their history stays): those kept before are let go too. The
  // root keeps the highest version, so that a name used again starts above what a cache may remember of it.
  `UPDATE lock SET version = (SELECT max(version) FROM lock) WHERE name = '';
   DELETE FROM lock WHERE release_id IS NULL AND blocked_since IS NULL AND name NOT IN ('', 'default');`,
  // Locks with a limit: the releases after the oldest (which keeps the columns above), as a JSON list.
  `ALTER TABLE lock ADD COLUMN other_releases TEXT;`,
  // Claims of several locks: every lock of the release in the columns, and of an event's release (JSON lists;
  // NULL for a release on one lock, as before).
  `ALTER TABLE lock ADD COLUMN release_locks TEXT;
   ALTER TABLE events ADD COLUMN locks TEXT;`,
  // Versions (version=): the release's in the columns (others carry theirs in other_releases), and each event's.
  `ALTER TABLE lock ADD COLUMN release_version TEXT;
   ALTER TABLE events ADD COLUMN version TEXT;`,
  // A newest-first lock's last granted version (JSON: version, at, name), kept with its row: stale is decided
  // from it, not from a history that is pruned. NULL in rows from before, as on locks of a fifo line.
  `ALTER TABLE lock ADD COLUMN released TEXT;`,
];
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * The lock, the locks above it (?2, a JSON array of names) and the locks below it; the root's row holds the
 * counter. Each part is looked up in the index of names (the names below `a` are those from `a/` up to, not
 * including, `a0`: '0' follows '/'), so a change reads its own rows, not every lock's; only the root's, which
 * is above everything, reads them all. In the order of a walk over the table, as before.
 */
export const AROUND_QUERY = `SELECT * FROM lock WHERE rowid IN (
    SELECT rowid FROM lock WHERE name IN (?1, '')
    UNION ALL SELECT rowid FROM lock WHERE name IN (SELECT value FROM json_each(?2))
    UNION ALL SELECT rowid FROM lock WHERE name >= ?1 || '/' AND name < ?1 || '0'
    UNION ALL SELECT rowid FROM lock WHERE ?1 = ''
  ) ORDER BY rowid`;

type ProgressRow = { delivered: number; attempts: number; next_at: number; dropped: number };
const toProgress = (r: ProgressRow): Progress => ({
  delivered: Number(r.delivered),
  attempts: Number(r.attempts),
  nextAt: Number(r.next_at),
  dropped: Number(r.dropped),
});

export function openSqliteStore(path: string, historyLimit: number, clock: () => number = Date.now): Store {
  const where = resolve(path);
  refuseNonFile(where); // a device such as /dev/null opens, and then fails in ways that say nothing useful
  let db: Database;
  let damagedTail: string | null = null; // what was found of a log whose last frame is bad, for the log
  try {
    db = new Database(path, { create: true, readwrite: true, strict: true });
  } catch (e) {
    throw explainPlace(where, e as Error);
  }
  try {
    db.run("PRAGMA busy_timeout = 0");
    // Held for the life of the process, on the file itself: a second daemon, through any path or
    // link to it, cannot read or write it. Set before WAL, so that no -shm file is shared either.
    db.run("PRAGMA locking_mode = EXCLUSIVE");
    // The first read takes the lock (an exclusive one when there is a write-ahead log, before SQLite reads it).
    db.query("PRAGMA user_version").get();
    damagedTail = refuseDamagedLog(db, where); // under that lock: no other daemon is writing the log as it is read
    prepareSchema(db, where); // reads first: nothing is written to a file that is not ours
    db.run("PRAGMA journal_mode = WAL");
    db.run("PRAGMA synchronous = FULL"); // fsync the WAL on every commit: a 1 is on disk before it is sent
    // Takes the exclusive lock now, and finds a file it may not write now, not at the first start
    // (SQLite opens such a file read-only without a word).
    db.run(HARMLESS_WRITE);
    // The commit the bad last frame ended may have handed out ids: they are never handed out again.
    if (damagedTail) db.run(`UPDATE lock SET last_id = last_id + ${IDS_SKIPPED} WHERE name = ''`);
  } catch (e) {
    db.close();
    throw whyNotOurs(where, e as Error);
  }
  // The files we hold, whatever later happens to their names: the database, and its write-ahead log, which
  // holds every commit since the last checkpoint (SQLite keeps it open, and it is there after the first write).
  const wal = logOf(where);
  const identity = { db: fileIdentity(where), wal: fileIdentity(wal) };
  const q = {
    all: db.query<LockRow, []>("SELECT * FROM lock"),
    // The lock, the locks above it (a JSON array of names) and the locks below it; the root's row holds the counter.
    around: db.query<LockRow, [string, string]>(AROUND_QUERY),
    exact: db.query<LockRow, [string]>("SELECT * FROM lock WHERE name IN (SELECT value FROM json_each(?))"),
    // When a lock last came free: its newest end of a release (a pool takes the child free the longest).
    freedAt: db.query<{ at: number | null }, [string]>(
      `SELECT max(at) AS at FROM events WHERE kind IN ('stopped', 'expired', 'abandoned')
         AND (lock = ?1 OR (locks IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(locks) WHERE value = ?1)))`,
    ),
    save: db.query(
      `INSERT INTO lock (name, last_id, release_id, holder, release_reason, started_at, expires_at,
         blocked_by, block_reason, blocked_since, version, release_by, block_by, other_releases, release_locks,
         release_version, released)
       VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (name) DO UPDATE SET release_id = excluded.release_id, holder = excluded.holder,
         release_reason = excluded.release_reason, started_at = excluded.started_at, expires_at = excluded.expires_at,
         blocked_by = excluded.blocked_by, block_reason = excluded.block_reason,
         blocked_since = excluded.blocked_since, version = excluded.version,
         release_by = excluded.release_by, block_by = excluded.block_by, other_releases = excluded.other_releases,
         release_locks = excluded.release_locks, release_version = excluded.release_version,
         released = excluded.released`,
    ),
    count: db.query("UPDATE lock SET last_id = ? WHERE name = ''"),
    forget: db.query("DELETE FROM lock WHERE name = ?"),
    // The names that count against RS_MAX_LOCKS (not the root, not the original's lock); with a JSON array
    // of locks, only those names that are one of them or under one.
    // With ?3, only the names ?3 holds (a release, in the columns or among other_releases, or the block).
    names: db.query<{ n: number }, [string | null, string, string | null]>(
      `SELECT count(*) AS n FROM lock WHERE name <> '' AND name <> ?2 AND (?1 IS NULL OR EXISTS (
         SELECT 1 FROM json_each(?1) AS s WHERE name = s.value OR substr(name, 1, length(s.value) + 1) = s.value || '/'))
         AND (?3 IS NULL OR release_by = ?3 OR block_by = ?3 OR EXISTS (
           SELECT 1 FROM json_each(coalesce(other_releases, '[]')) AS r WHERE json_extract(r.value, '$.by') = ?3))`,
    ),
    append: db.query(
      "INSERT INTO events (lock, at, kind, release_id, name, reason, made_by, status, locks, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    prune: db.query("DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?"),
    history: db.query<EventRow, [number]>(
      "SELECT lock, at, kind, release_id, name, reason, made_by, locks, version FROM events ORDER BY seq DESC LIMIT ?",
    ),
    // The events of a lock and the locks under it, and of every release that held one of them among others.
    lockHistory: db.query<EventRow, [string, number]>(
      `SELECT lock, at, kind, release_id, name, reason, made_by, locks, version FROM events
       WHERE lock = ?1 OR ?1 = '' OR substr(lock, 1, length(?1) + 1) = ?1 || '/'
          OR (locks IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(locks)
                WHERE value = ?1 OR substr(value, 1, length(?1) + 1) = ?1 || '/'))
       ORDER BY seq DESC LIMIT ?2`,
    ),
    // As many pages as a change writes (a change: the lock, an event, its index and the id sequence).
    probe: db.query("INSERT OR REPLACE INTO storage_probe (id, pad) VALUES (1, zeroblob(12288))"),
    checkpoint: db.query<{ busy: number; log: number; checkpointed: number }, []>("PRAGMA wal_checkpoint(RESTART)"),
    mark: db.query("INSERT OR IGNORE INTO freeze_marks (window_key, lock, kind, at) VALUES (?, ?, ?, ?)"),
    latestMark: db.query<{ kind: string; at: number }, [string, string]>(
      "SELECT kind, at FROM freeze_marks WHERE window_key = ? AND lock = ? ORDER BY at DESC LIMIT 1",
    ),
    locksMarked: db.query<{ lock: string }, [string, string]>(
      `SELECT lock FROM freeze_marks AS m WHERE window_key = ?1 AND kind = ?2
         AND at = (SELECT max(at) FROM freeze_marks WHERE window_key = ?1 AND lock = m.lock)`,
    ),
    newestAt: db.query<{ at: number }, []>("SELECT at FROM events ORDER BY seq DESC LIMIT 1"),
    marked: db.query<{ found: number }, [string]>("SELECT 1 AS found FROM freeze_marks WHERE window_key = ? LIMIT 1"),
    span: db.query<{ oldest: number | null; newest: number | null }, []>(
      "SELECT min(seq) AS oldest, max(seq) AS newest FROM events",
    ),
    progress: db.query<ProgressRow, [string]>(
      "SELECT delivered, attempts, next_at, dropped FROM webhooks WHERE key = ?",
    ),
    newWebhook: db.query("INSERT OR IGNORE INTO webhooks (key, delivered) VALUES (?, ?)"),
    advance: db.query(
      `UPDATE webhooks SET delivered = max(delivered, ?2), dropped = dropped + ?3, attempts = 0, next_at = 0
       WHERE key = ?1`,
    ),
    retry: db.query("UPDATE webhooks SET attempts = ?2, next_at = ?3 WHERE key = ?1"),
    skip: db.query("UPDATE webhooks SET delivered = ?2, dropped = dropped + ?3 WHERE key = ?1"),
    pending: db.query<EventRow & { seq: number }, [number, number]>(
      "SELECT seq, lock, at, kind, release_id, name, reason, made_by, status, locks, version FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
    ),
  };
  const line = new LocalWaitLine();
  const health = { writable: true, problem: null as string | null, gone: false };
  let synchronous: "FULL" | "NORMAL" = "FULL";

  const around = (lock: string) => q.around.all(lock, JSON.stringify(ancestorsOf(lock)));
  const stored = (lock: string): Stored => toStored(around(lock));
  // What a decision reads: around every lock it may hold, the other rows of their releases, and for a pool
  // when each child last came free.
  const storedFor = (lock: string, options: TransactOptions): Stored => {
    const found = readClaim(options.claim ?? [lock], around, (names) => q.exact.all(JSON.stringify(names)));
    if (options.freedOf?.length)
      found.freedAt = new Map(options.freedOf.map((l) => [l, q.freedAt.get(l)?.at ?? Number.NEGATIVE_INFINITY]));
    return found;
  };
  const count: CountNames = (locks, by) =>
    q.names.get(locks === null ? null : JSON.stringify(locks), DEFAULT_LOCK, by ?? null)?.n ?? 0;
  const append = (events: Event[]) => {
    for (const e of events)
      q.append.run(
        e.lock,
        e.at,
        e.kind,
        e.releaseId,
        e.name,
        e.reason,
        e.by ?? null,
        e.status ?? null,
        eventLocks(e),
        e.version ?? null,
      );
    q.prune.run(historyLimit);
  };
  // Joining or leaving the line grants nothing: such a commit is not worth an fsync of its own
  // (the next durable commit carries it to disk).
  const durability = (level: "FULL" | "NORMAL") => {
    if (level === synchronous) return;
    db.run(`PRAGMA synchronous = ${level}`);
    synchronous = level;
  };
  // The path must still name the file we hold: a removed or replaced file would let a restart
  // (or a second daemon) start afresh while this one goes on granting.
  const checkIdentity = () => {
    if (health.gone) return;
    const db = fileIdentity(where);
    if (db === null || db !== identity.db) {
      health.gone = true;
      health.problem = `the database file ${where} was ${db === null ? "removed" : "replaced"} while the daemon ran: nothing more is granted; restore it and restart the daemon`;
      return;
    }
    const log = identity.wal === null ? null : fileIdentity(wal); // none at start-up: nothing to compare
    if (log === identity.wal) return;
    health.gone = true;
    health.problem = `the write-ahead log ${wal} was ${log === null ? "removed" : "replaced"} while the daemon ran: the changes since the last checkpoint are only in the daemon's open copy, and a crash would lose them; nothing more is granted; stop the daemon with SIGTERM (it writes them back into the database as it closes) and start it again`;
  };
  // Every write goes through here: a failure is reported, not thrown, so the caller answers storage.
  const inTransaction = db.transaction(<T>(work: () => T): T => work());
  function write<T>(level: "FULL" | "NORMAL", work: () => T): T | null {
    if (health.gone) return null;
    try {
      durability(level);
      const result = inTransaction.immediate(() => {
        const done = work();
        checkIdentity(); // a file moved away before the commit: nothing is written to it, and the answer is true
        if (health.gone) throw new Gone();
        return done;
      }) as T;
      // Moved away as it committed: whether that commit will count is unknown, so it is no answer.
      checkIdentity();
      if (health.gone) return null;
      return result;
    } catch (e) {
      if (e instanceof Gone) return null;
      health.writable = false;
      health.problem = `could not write ${where}: ${(e as Error).message}`;
      return null;
    }
  }
  // Group commit: the changes asked for in one turn of the event loop are decided one after another, in
  // the order asked, each on what the ones before it wrote, inside one write transaction that one fsync
  // commits. Each is answered once that commit is known; if it fails, every one is answered `storage`
  // and the wait line is put back as it was.
  type Asked = { lock: string; decide: Decide; options: TransactOptions; answer: (d: Decision) => void };
  let asked: Asked[] = [];
  const commitAsked = () => {
    const batch = asked;
    asked = [];
    const putBack = line.save();
    let decisions: Decision[] | null = null;
    try {
      const now = clock();
      const level = durabilityFor(batch, now);
      decisions = write(level, () =>
        batch.map(({ lock, decide, options }) =>
          decideInLine(lock, storedFor(lock, options), now, decide, line, options, count, (w) => {
            for (const [name, e] of w.entries)
              if (forgets(name, e)) q.forget.run(name);
              else q.save.run(name, ...toColumns(e));
            if (w.lastId !== null) q.count.run(w.lastId);
            append(w.events);
          }),
        ),
      );
      if (decisions && level === "FULL" && decisions.some((d) => d.committed)) saved();
    } catch (e) {
      // The look before a lone join could not read the file: every change in the batch is answered storage.
      health.writable = false;
      health.problem = `could not read ${where}: ${(e as Error).message}`;
    }
    if (!decisions) putBack();
    batch.forEach((a, i) => {
      a.answer(decisions?.[i] ?? { outcome: STORAGE_FAILED, committed: null, joined: null });
    });
  };
  // Joining the line needs no fsync of its own, a grant does: for a lone join, a look first says which it is.
  const durabilityFor = (batch: Asked[], now: number): "FULL" | "NORMAL" => {
    const [only] = batch;
    if (batch.length !== 1 || !only?.options.join) return "FULL";
    const preview = decideInLine(
      only.lock,
      storedFor(only.lock, only.options),
      now,
      only.decide,
      line,
      only.options,
      count,
      null,
    );
    return preview.committed && onlyQueueEvents(preview.committed.events) ? "NORMAL" : "FULL";
  };
  // Storage works again only when a write as large as a change's reached the disk: a small one (a waiter
  // joining, a webhook's progress, a transaction that wrote nothing) may fit where a change does not.
  const saved = () => {
    health.writable = true;
    health.problem = null;
  };
  const restartLog = (): boolean => {
    try {
      const r = q.checkpoint.get();
      if (r && r.busy === 0 && r.log === r.checkpointed) return true;
      health.problem = `could not write ${where}: the write-ahead log could not be checkpointed`;
    } catch (e) {
      health.problem = `could not write ${where}: ${(e as Error).message}`;
    }
    return false;
  };
  const watchdog = setInterval(() => {
    checkIdentity();
    if (health.writable || health.gone) return;
    // A disk may be full of this daemon's own write-ahead log: a checkpoint lets the log be written again
    // from its start, in the space it already has. The probe proves a change fits; the checkpoint after it
    // gives its space back to that change.
    if (restartLog() && write("FULL", () => q.probe.run()) !== null && restartLog()) saved();
    else health.problem = `${health.problem ?? "could not write"}; tried again at ${iso(clock())}`;
  }, 1000);
  watchdog.unref?.();

  return {
    description: `SQLite ${where}`,
    notices: damagedTail ? [damagedTail] : [],
    exclusive: true,
    health: () => ({ writable: health.writable && !health.gone, readable: true, problem: health.problem }),
    readAll: async () => toStored(q.all.all()),
    read: async (lock) => stored(lock),
    transact: (lock, decide, options = {}) =>
      new Promise<Decision>((answer) => {
        if (asked.length === 0) setImmediate(commitAsked);
        asked.push({ lock, decide, options, answer });
      }),
    leave: async (lock, id, why) => {
      const waiter = line.leave(id); // leaves even when the event cannot be written
      if (!waiter) return null;
      const event = queueEvent("left-queue", lock, waiter, clock(), why);
      write("NORMAL", () => append([event]));
      return { lock, events: [event], before: null, after: null, entries: new Map() };
    },
    mark: async (mark, events) => {
      const added = write("FULL", () => {
        if (q.mark.run(mark.window, mark.lock, mark.kind, mark.at).changes === 0) return false;
        append(events);
        return true;
      });
      if (added) saved();
      return added ? { lock: mark.lock, events, before: null, after: null, entries: new Map() } : null;
    },
    markNext: async (series, lock, next) => {
      const decided = write("FULL", () => {
        const row = q.latestMark.get(series, lock);
        const newest = q.newestAt.get()?.at ?? null;
        const found = next(row && { window: series, lock, kind: row.kind, at: Number(row.at) }, newest ?? -Infinity);
        if (!found) return null;
        for (const m of found.marks) q.mark.run(m.window, m.lock, m.kind, m.at);
        append(found.events);
        return found;
      });
      if (decided) saved();
      return decided ? { lock, events: decided.events, before: null, after: null, entries: new Map() } : null;
    },
    locksMarked: async (series, kind) => q.locksMarked.all(series, kind).map((r) => r.lock),
    marked: async (window) => q.marked.get(window) !== null,
    outbox: {
      claim: async (webhook, limit, backlog) => {
        const { oldest, newest } = q.span.get() ?? { oldest: null, newest: null };
        let row = q.progress.get(webhook);
        if (!row) {
          write("NORMAL", () => q.newWebhook.run(webhook, newest ?? 0)); // a new webhook starts from the newest
          row = q.progress.get(webhook);
          if (!row) return null;
        }
        const { progress, skipped } = catchUp(toProgress(row), { oldest, newest: newest ?? 0 }, backlog);
        if (skipped > 0) write("NORMAL", () => q.skip.run(webhook, progress.delivered, skipped));
        const events = q.pending.all(progress.delivered, limit).map((r) => ({ seq: r.seq, event: toEvent(r) }));
        return { progress, events, newest: newest ?? 0 };
      },
      advance: async (webhook, seq, dropped) => {
        write("NORMAL", () => q.advance.run(webhook, seq, dropped));
      },
      retry: async (webhook, attempts, at) => {
        write("NORMAL", () => q.retry.run(webhook, attempts, at));
      },
    },
    waiting: () => line.list(),
    history: async (limit, lock) =>
      (lock === undefined ? q.history.all(limit) : q.lockHistory.all(lock, limit)).map(toEvent),
    watch: () => {},
    backup: () => db.serialize(),
    close: async () => {
      clearInterval(watchdog);
      db.close();
    },
  };
}

/** Thrown inside a transaction whose file was moved away, to roll it back: health already says why. */
class Gone extends Error {}

// Says what is wrong with the place RS_DB points at. Only called once opening failed:
// node:fs is loaded here rather than at the top, as loading it slows every start-up.
function explainPlace(file: string, e: Error): StoreOpenError {
  const { accessSync, constants, existsSync, statSync } = require("node:fs") as typeof import("node:fs");
  const dir = dirname(file);
  try {
    accessSync(dir, constants.F_OK);
  } catch (missing) {
    if ((missing as NodeJS.ErrnoException).code === "EACCES")
      return new StoreOpenError(
        `cannot reach ${dir}: give the daemon's user permission to enter every directory on the way`,
      );
    return new StoreOpenError(`the directory ${dir} for RS_DB does not exist: create it or point RS_DB elsewhere`);
  }
  if (existsSync(file) && !statSync(file).isFile()) return notAFile(file);
  try {
    accessSync(dir, constants.W_OK); // SQLite adds -wal, -shm and -lock files beside the database
    if (existsSync(file)) accessSync(file, constants.R_OK | constants.W_OK);
  } catch {
    return new StoreOpenError(
      `cannot write ${existsSync(file) ? file : dir}: give the daemon's user write access, or point RS_DB at a writable place`,
    );
  }
  return new StoreOpenError(`cannot use ${file} as the releasestatus database: ${e.message}`);
}

const notAFile = (file: string) =>
  new StoreOpenError(`RS_DB=${file} is not a regular file: point RS_DB at a file (it is created if missing)`);

function refuseNonFile(file: string) {
  const { statSync } = require("node:fs") as typeof import("node:fs");
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file, { throwIfNoEntry: false });
  } catch {
    return; // a place the daemon may not look into: opening it says why (explainPlace)
  }
  if (st && !st.isFile()) throw notAFile(file);
}

// Says why the file could not be taken: another daemon holds it, it is not ours, or the place is wrong.
function whyNotOurs(where: string, e: Error): StoreOpenError {
  if (e instanceof StoreOpenError) return e;
  if (/locked|busy/i.test(e.message))
    return new StoreOpenError(
      `another releasestatus is already using ${where} (through this path or another link to the file): stop it first, or give this one its own RS_DB`,
    );
  if (/readonly|unable to open|disk I\/O/i.test(e.message)) return explainPlace(where, e);
  if (/not a database|malformed|corrupt/i.test(e.message))
    return new StoreOpenError(
      `${where} is not a releasestatus database, or is damaged: point RS_DB at another file, or restore it from a backup; it was left as it is`,
    );
  return new StoreOpenError(`cannot use ${where} as the releasestatus database: ${e.message}`);
}

// The path with every symbolic link resolved, as SQLite resolves it to place its write-ahead log.
function realPath(path: string): string {
  const { realpathSync } = require("node:fs") as typeof import("node:fs");
  return realpathSync(path);
}

// The write-ahead log: SQLite keeps it beside the file a symbolic link points to.
const logOf = (file: string) => `${realPath(file)}-wal`;

// Device and inode: what the path names now, or null when it names nothing.
function fileIdentity(path: string): string | null {
  const { statSync } = require("node:fs") as typeof import("node:fs"); // loaded on first use, after start-up's hot path
  const st = statSync(path, { throwIfNoEntry: false });
  return st ? `${st.dev}:${st.ino}` : null;
}

// SQLite recovers the write-ahead log up to its first bad frame without a word: frames of the same log after
// it are commits it would drop (releases answered 1, then forgotten and their ids handed out again). A bad
// last frame is a write cut short by a crash or damage, which nobody can tell apart: the daemon starts (a
// power cut must not keep it down), keeps a copy of the log and says so; null when the log is sound.
function refuseDamagedLog(db: Database, where: string): string | null {
  const log = logOf(where);
  const bytes = readIfThere(log);
  const lost = lostFrames(bytes);
  if (!lost) return null;
  if ("badLastFrame" in lost) {
    const copy = `${log}-damaged-${new Date().toISOString().replace(/[-:]|\.\d+/g, "")}`;
    const { writeFileSync } = require("node:fs") as typeof import("node:fs");
    writeFileSync(copy, bytes, { flag: "wx" });
    return `the last frame (${lost.badLastFrame}) of the write-ahead log ${log} fails its checksum: a write cut short by a crash, or damage; the change it ended is lost (if it was answered 1, the disk did not keep what it promised), the log as it was is kept in ${copy}, and release ids skip ${IDS_SKIPPED} ahead so that none it handed out is handed out again`;
  }
  // Closing would checkpoint what SQLite recovered into the database and delete the log, and with it the
  // evidence: the connection is cut off from the file first, so that both are left as they were.
  db.fileControl(SQLITE_FCNTL_PERSIST_WAL, 1);
  db.fileControl(SQLITE_FCNTL_NULL_IO, null);
  const what =
    "badHeader" in lost
      ? "its header is damaged, so SQLite would drop every commit in it"
      : `frame ${lost.badFrame} of ${lost.frames} fails its checksum, and SQLite would drop the ${lost.framesAfter} frames of the same log after it`;
  throw new StoreOpenError(
    `the write-ahead log ${log} is damaged: ${what} (releases answered 1 would be forgotten); both files were left as they were: restore them from a backup, or accept the loss by opening the database once with sqlite3 (ids of the lost releases may then be handed out again), then start again`,
  );
}

function readIfThere(path: string): Uint8Array {
  const { readFileSync } = require("node:fs") as typeof import("node:fs");
  try {
    return readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return new Uint8Array(0); // no log: nothing to recover
    throw e;
  }
}

function prepareSchema(db: Database, where: string) {
  const check = db.query<{ quick_check: string }, []>("PRAGMA quick_check").get();
  if (check?.quick_check !== "ok")
    throw new StoreOpenError(
      `${where} is damaged (${check?.quick_check}): restore it from a backup; it was left as it is`,
    );
  const appId = (db.query("PRAGMA application_id").get() as { application_id: number }).application_id;
  const version = (db.query("PRAGMA user_version").get() as { user_version: number }).user_version;
  const tables = (db.query("SELECT count(*) AS n FROM sqlite_master").get() as { n: number }).n;
  if (appId === 0 && tables === 0) {
    db.run(`PRAGMA application_id = ${APPLICATION_ID}`);
  } else if (appId !== APPLICATION_ID) {
    throw new StoreOpenError(
      `${where} is not a releasestatus database: point RS_DB at another file; it was left as it is`,
    );
  }
  if (version < 0)
    throw new StoreOpenError(
      `${where} has schema version ${version}, which no releasestatus writes: it was changed by something else; restore it from a backup; it was left as it is`,
    );
  if (version > SCHEMA_VERSION)
    throw new StoreOpenError(
      `${where} has schema version ${version}, newer than this releasestatus understands (${SCHEMA_VERSION}): run a newer releasestatus; it was left as it is`,
    );
  for (let v = version; v < SCHEMA_VERSION; v++) {
    try {
      db.transaction(() => {
        db.run(MIGRATIONS[v] as string);
        db.run(`PRAGMA user_version = ${v + 1}`);
      }).immediate();
    } catch (e) {
      throw new StoreOpenError(
        `${where} could not be brought from schema version ${v} to ${v + 1} (${(e as Error).message}): it was changed by something else; restore it from a backup; it was left at version ${v}`,
      );
    }
  }
  checkSchema(db, where);
}

// Every table, index and column, as "table: column, column" lines: what the migrations made must all be there.
const SCHEMA_QUERY = `SELECT m.type || ' ' || m.name || ': ' || coalesce(group_concat(c.name, ', '), '') AS line
  FROM sqlite_master m LEFT JOIN pragma_table_info(m.name) c GROUP BY m.name ORDER BY m.name`;
const schemaOf = (db: Database) =>
  db
    .query<{ line: string }, []>(SCHEMA_QUERY)
    .all()
    .map((r) => r.line);

// A file at the current version that lacks a table or column (changed by hand, or by another program) would
// fail at its first query; one without the root's row would hand out release ids again.
function checkSchema(db: Database, where: string) {
  const made = new Database(":memory:");
  for (const migration of MIGRATIONS) made.run(migration);
  const expected = schemaOf(made);
  made.close();
  const found = new Set(schemaOf(db));
  const missing = expected.filter((line) => !found.has(line));
  if (missing.length > 0)
    throw new StoreOpenError(
      `${where} does not have the tables and columns of schema version ${SCHEMA_VERSION}, though it says it does (missing or different: ${missing.join("; ")}): it was changed by something else; restore it from a backup; it was left as it is`,
    );
  if (db.query("SELECT 1 FROM lock WHERE name = ''").get() === null)
    throw new StoreOpenError(
      `${where} has lost the row that counts release ids (the lock named ''), so ids would be handed out again: restore it from a backup; it was left as it is`,
    );
}
