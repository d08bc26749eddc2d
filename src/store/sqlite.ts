// Where the release state and its history are kept: an SQLite file, written
// with full synchronous commits so that every answer of 1 survives a crash.
import { Database, type Statement } from "bun:sqlite";
import { dirname, resolve } from "node:path";
import type { Block, Event, EventKind, Release, State } from "../release.ts";

/** Everything the daemon needs from storage; a PostgreSQL store can implement the same. */
export interface Store {
  readonly description: string; // for logs and /status: where state lives, never a password
  load(): State;
  commit(next: State, events: Event[]): void; // one transaction; throws when it did not commit
  history(limit: number): Event[];
  probe(): void; // a harmless write, to learn whether storage works again
  close(): void;
}

/** Start-up problems with the database file: the daemon says so and exits 2. */
export class StoreOpenError extends Error {}

const APPLICATION_ID = 0x52537431; // "RSt1" in the file header marks the file as ours
const LOCK = "default"; // named locks may come later; every row already says which lock it is
const HARMLESS_WRITE = `UPDATE lock SET last_id = last_id WHERE name = '${LOCK}'`; // proves the file can be written

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
   INSERT INTO lock (name, last_id) VALUES ('${LOCK}', 0);`,
];
export const SCHEMA_VERSION = MIGRATIONS.length;

type LockRow = {
  last_id: number;
  release_id: number | null;
  holder: string | null;
  release_reason: string | null;
  started_at: number | null;
  expires_at: number | null;
  blocked_by: string | null;
  block_reason: string | null;
  blocked_since: number | null;
};
type EventRow = { at: number; kind: string; release_id: number | null; name: string; reason: string };

export function openSqliteStore(path: string, historyLimit: number): Store {
  const inMemory = path === ":memory:";
  const where = inMemory ? "memory (RS_DB=:memory:)" : resolve(path);
  const ownership = inMemory ? null : holdOwnership(where); // fails first when the place is wrong
  let db: Database;
  try {
    db = new Database(path, { create: true, readwrite: true, strict: true });
    db.run("PRAGMA busy_timeout = 0");
    prepareSchema(db, where);
    if (!inMemory) {
      db.run("PRAGMA journal_mode = WAL");
      db.run("PRAGMA synchronous = FULL"); // fsync the WAL on every commit: a 1 is on disk before it is sent
    }
    // SQLite opens a file it may not write read-only without a word: find out now, not at the first start.
    db.run(HARMLESS_WRITE);
  } catch (e) {
    ownership?.close();
    if (e instanceof StoreOpenError) throw e;
    if (/readonly|unable to open/i.test((e as Error).message)) throw explainPlace(where, e as Error);
    if (/not a database|malformed|corrupt/i.test((e as Error).message))
      throw new StoreOpenError(
        `${where} is not a releasestatus database, or is damaged: point RS_DB at another file, or restore it from a backup; it was left as it is`,
      );
    throw new StoreOpenError(`cannot use ${where} as the releasestatus database: ${(e as Error).message}`);
  }
  const q = {
    load: db.query<LockRow, [string]>("SELECT * FROM lock WHERE name = ?"),
    save: db.query(
      `UPDATE lock SET last_id = ?, release_id = ?, holder = ?, release_reason = ?, started_at = ?,
       expires_at = ?, blocked_by = ?, block_reason = ?, blocked_since = ? WHERE name = ?`,
    ),
    append: db.query("INSERT INTO events (lock, at, kind, release_id, name, reason) VALUES (?, ?, ?, ?, ?, ?)"),
    prune: db.query("DELETE FROM events WHERE seq <= (SELECT max(seq) FROM events) - ?"),
    history: db.query<EventRow, [string, number]>(
      "SELECT at, kind, release_id, name, reason FROM events WHERE lock = ? ORDER BY seq DESC LIMIT ?",
    ),
    probe: db.query(HARMLESS_WRITE),
  };
  const commit = db.transaction((next: State, events: Event[]) => {
    save(q.save, next);
    for (const e of events) q.append.run(LOCK, e.at, e.kind, e.releaseId, e.name, e.reason);
    q.prune.run(historyLimit);
  });
  return {
    description: inMemory ? "memory (state is lost when the daemon stops)" : `SQLite ${where}`,
    load: () => toState(q.load.get(LOCK) as LockRow),
    commit: (next, events) => commit.immediate(next, events),
    history: (limit) => q.history.all(LOCK, limit).map(toEvent),
    probe: () => void q.probe.run(),
    close: () => {
      db.close();
      ownership?.close();
    },
  };
}

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
  if (existsSync(file) && !statSync(file).isFile()) return new StoreOpenError(`RS_DB=${file} is not a regular file`);
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

// A write transaction held open on a small file beside the database, for as long as
// the process lives: a second daemon on the same database cannot take it and refuses
// to start. The operating system lets go of it when the process ends, however it ends.
function holdOwnership(file: string): Database {
  const lockFile = `${file}-lock`;
  let owner: Database;
  try {
    owner = new Database(lockFile, { create: true, readwrite: true });
    owner.run("PRAGMA busy_timeout = 0");
    owner.run("PRAGMA journal_mode = DELETE");
    owner.run("CREATE TABLE IF NOT EXISTS owner (pid INTEGER)");
  } catch (e) {
    throw explainPlace(file, e as Error);
  }
  try {
    owner.run("BEGIN IMMEDIATE");
  } catch {
    owner.close();
    throw new StoreOpenError(
      `another releasestatus is already using ${file} (it holds ${lockFile}): stop it first, or give this one its own RS_DB`,
    );
  }
  return owner;
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
  if (version > SCHEMA_VERSION)
    throw new StoreOpenError(
      `${where} has schema version ${version}, newer than this releasestatus understands (${SCHEMA_VERSION}): run a newer releasestatus; it was left as it is`,
    );
  for (let v = version; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.run(MIGRATIONS[v] as string);
      db.run(`PRAGMA user_version = ${v + 1}`);
    }).immediate();
  }
}

function save(stmt: Statement, s: State) {
  const r = s.release;
  const b = s.block;
  stmt.run(
    s.lastId,
    r?.id ?? null,
    r?.name ?? null,
    r?.reason ?? null,
    r?.startedAt ?? null,
    r?.expiresAt ?? null,
    b?.name ?? null,
    b?.reason ?? null,
    b?.since ?? null,
    LOCK,
  );
}

function toState(row: LockRow): State {
  const release: Release | null =
    row.release_id === null
      ? null
      : {
          id: row.release_id,
          name: row.holder ?? "",
          reason: row.release_reason ?? "",
          startedAt: row.started_at ?? 0,
          expiresAt: row.expires_at,
        };
  const block: Block | null =
    row.blocked_since === null
      ? null
      : { name: row.blocked_by ?? "", reason: row.block_reason ?? "", since: row.blocked_since };
  return { lastId: row.last_id, release, block };
}

const toEvent = (row: EventRow): Event => ({
  at: row.at,
  kind: row.kind as EventKind,
  releaseId: row.release_id,
  name: row.name,
  reason: row.reason,
});
