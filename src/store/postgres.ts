// The release lock shared by several replicas through one PostgreSQL database,
// with Bun's built-in SQL client. Every transition is decided inside a
// transaction that locks the lock's row, by the same rules as with SQLite, on
// the database's clock; the wait queue is a table, woken by LISTEN/NOTIFY with a
// poll as a safety net, and each waiter row is kept alive by its replica.
import { SQL } from "bun";
import type { Committed, Rule } from "../engine.ts";
import {
  andThen,
  type Block,
  type Change,
  EMPTY_STATE,
  type Event,
  type EventKind,
  expire,
  type Outcome,
  type Release,
  refuse,
  SHUTTING_DOWN,
  STORAGE_FAILED,
  type StartRequest,
  type State,
  start,
  unchanged,
  WAITABLE,
} from "../release.ts";
import { StoreOpenError } from "./sqlite.ts";

const LOCK = "default";
const CHANNEL = "releasestatus";
const SCHEMA_VERSION = 1;
const MIGRATION_LOCK = 0x5253_7431; // pg_advisory_xact_lock key: replicas starting at once migrate one at a time
// Every POLL_MS each replica vouches for its waiters, ends a lease that ran out (on the database's
// clock) and wakes its waiters: the safety net under LISTEN/NOTIFY. A waiter not vouched for in
// 5 s no longer counts, and its row is deleted after 10 s; but in the first seconds after the
// database (re)started every row counts and none is deleted, so that replicas can vouch for their
// waiters again before a newcomer could take their place.
const POLL_MS = 1000;
const TRANSACTION_TIMEOUT_MS = 5000;

export type Queued = { name: string; reason: string; since: number };

/** Settings the shared lock needs from the daemon. */
type SharedOptions = {
  url: string;
  historyLimit: number;
  onCommit: (c: Committed) => void; // our own changes: log, metrics, live page
  onRemoteChange: (events: Event[]) => void; // another replica's changes: live page only
  onStorageError: (e: Error) => void;
  onState: (s: State) => void; // keeps the daemon's in-process view current for /status and /metrics
};

// Credentials that do not work, or a database that does not exist, are configuration errors.
const CONFIGURATION_ERRORS = new Set(["28P01", "28000", "3D000"]);

export async function openPostgresLock(opts: SharedOptions) {
  const url = new URL(opts.url);
  const description = `PostgreSQL ${url.hostname}:${url.port || 5432}${url.pathname}`;
  const sql = new SQL(opts.url, { max: 10, connectionTimeout: 3, idleTimeout: 30 });
  const replica = crypto.randomUUID();
  const state = {
    current: null as State | null, // the last state read or written; null until the database answers
    waiting: [] as Queued[],
    healthy: false,
    closing: false,
    failures: 0,
    retryAt: 0, // circuit breaker: while failing, requests get `storage` without a connection attempt until then
    migrated: false,
  };
  const localWaiters = new Map<number, StartRequest>(); // waiter rows this replica keeps alive, by id
  const wakeUps = new Set<() => void>();

  function failed(e: Error) {
    state.failures++;
    state.retryAt = Date.now() + Math.min(250 * 2 ** (state.failures - 1), 5000);
    if (state.healthy || state.failures === 1) opts.onStorageError(e);
    state.healthy = false;
  }

  function succeeded() {
    const recovered = state.failures > 0;
    state.failures = 0;
    state.retryAt = 0;
    state.healthy = true;
    // Bun's LISTEN reconnects on a backoff of up to 30 s: subscribe afresh as soon as the database is back.
    if (recovered) void subscribe(true);
  }

  /** Runs `work` in one transaction, bounded in time; undefined when storage failed. */
  async function inTransaction<T>(work: (tx: SQL) => Promise<T>): Promise<T | undefined> {
    if (Date.now() < state.retryAt) return undefined;
    let timer: Timer | undefined;
    try {
      if (!state.migrated) await migrate(sql);
      state.migrated = true;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${TRANSACTION_TIMEOUT_MS} ms`)),
          TRANSACTION_TIMEOUT_MS,
        );
      });
      const result = await Promise.race([sql.begin((tx) => work(tx as unknown as SQL)), timeout]);
      succeeded();
      return result;
    } catch (e) {
      failed(e as Error);
      return undefined; // also when COMMIT's outcome is unknown: the answer is 0, and a lease bounds a grant that did commit
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Decides a rule against the locked row on the database's clock; commits its change with
   * any lease that ran out first. `self` is the caller's own waiter row, if it waits in line.
   */
  async function transact(rule: Rule, self: number | null = null): Promise<Outcome> {
    if (state.closing) return SHUTTING_DOWN;
    const decided = await inTransaction(async (tx) => {
      const [row] = await tx`
        SELECT *, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now
        FROM releasestatus_lock WHERE name = ${LOCK} FOR UPDATE`;
      const before = toState(row);
      const now = Number(row.now);
      const [{ ahead }] = await tx`
        SELECT count(*) AS ahead FROM releasestatus_live_waiters
        WHERE lock = ${LOCK} AND (${self}::bigint IS NULL OR id < ${self}::bigint)`;
      const expired = expire(before, now);
      const outcome = expired ? andThen(expired, (s) => rule(s, now, Number(ahead))) : rule(before, now, Number(ahead));
      const change: Change | null = outcome.ok ? outcome : expired;
      if (change && change.events.length > 0) {
        await save(tx, change);
        if (outcome.ok && self !== null) await tx`DELETE FROM releasestatus_waiters WHERE id = ${self}`;
      }
      return { outcome, before, after: change?.next ?? before, events: change?.events ?? [] };
    });
    if (!decided) return STORAGE_FAILED;
    state.current = decided.after;
    opts.onState(decided.after);
    if (decided.events.length) opts.onCommit({ events: decided.events, before: decided.before, after: decided.after });
    return decided.outcome;
  }

  async function save(tx: SQL, change: Change) {
    const s = change.next;
    const r = s.release;
    const b = s.block;
    await tx`
      UPDATE releasestatus_lock SET last_id = ${s.lastId}, release_id = ${r?.id ?? null}, holder = ${r?.name ?? null},
        release_reason = ${r?.reason ?? null}, started_at = ${r?.startedAt ?? null}, expires_at = ${r?.expiresAt ?? null},
        blocked_by = ${b?.name ?? null}, block_reason = ${b?.reason ?? null}, blocked_since = ${b?.since ?? null}
      WHERE name = ${LOCK}`;
    for (const e of change.events) await insertEvent(tx, e);
    await tx`DELETE FROM releasestatus_events WHERE seq <= (SELECT max(seq) FROM releasestatus_events) - ${opts.historyLimit}`;
    await tx`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ replica, events: change.events })})`; // delivered on commit
  }

  const insertEvent = (tx: SQL, e: Event) =>
    tx`INSERT INTO releasestatus_events (lock, at, kind, release_id, name, reason)
       VALUES (${LOCK}, ${e.at}, ${e.kind}, ${e.releaseId}, ${e.name}, ${e.reason})`;

  /** Joins the line in the database and takes the release when this waiter is first and it is free. */
  async function startOrWait(req: StartRequest, waitSeconds: number, gone: AbortSignal): Promise<Outcome> {
    const rule: Rule = (s, now, ahead) => start(s, req, now, ahead);
    const first = await transact(rule);
    if (first.ok || waitSeconds === 0 || !WAITABLE.has(first.reason)) return first;
    const joined = await inTransaction(async (tx) => {
      const [row] = await tx`
        INSERT INTO releasestatus_waiters (lock, name, reason, replica) VALUES (${LOCK}, ${req.name}, ${req.reason}, ${replica})
        RETURNING id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now`;
      const event: Event = {
        at: Number(row.now),
        kind: "waiting",
        releaseId: null,
        name: req.name,
        reason: req.reason,
      };
      await insertEvent(tx, event);
      await tx`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ replica, events: [event] })})`;
      return { id: Number(row.id), event };
    });
    if (!joined) return STORAGE_FAILED;
    localWaiters.set(joined.id, req);
    told([joined.event]);
    const deadline = Date.now() + waitSeconds * 1000;
    try {
      for (;;) {
        if (state.closing) return SHUTTING_DOWN;
        if (gone.aborted) return await leave(joined.id, req, "disconnected", refuse("timeout", "the client went away"));
        if (Date.now() >= deadline)
          return await leave(
            joined.id,
            req,
            "timed out",
            refuse("timeout", `waited ${waitSeconds}s; ${first.message}`),
          );
        const attempt = await transact(rule, joined.id);
        if (attempt.ok) return attempt;
        await wakeUp(Math.min(POLL_MS, deadline - Date.now()), gone);
      }
    } finally {
      localWaiters.delete(joined.id);
    }
  }

  async function leave(id: number, req: StartRequest, why: string, answer: Outcome): Promise<Outcome> {
    const event = await inTransaction(async (tx) => {
      const removed = await tx`DELETE FROM releasestatus_waiters WHERE id = ${id} RETURNING id`;
      if (!removed.length) return null;
      const [{ now }] = await tx`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now`;
      const event: Event = { at: Number(now), kind: "left-queue", releaseId: null, name: req.name, reason: why };
      await insertEvent(tx, event);
      await tx`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ replica, events: [event] })})`;
      return event;
    });
    if (event) told([event]);
    return answer;
  }

  // Someone joined or left the line through this replica: the log and live page hear of it.
  const told = (events: Event[]) => {
    const s = state.current ?? EMPTY_STATE;
    opts.onCommit({ events, before: s, after: s });
  };

  // Resolves on the next notification, after `ms`, or when the client goes away.
  function wakeUp(ms: number, gone: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        wakeUps.delete(done);
        gone.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(ms, 0));
      wakeUps.add(done);
      gone.addEventListener("abort", done);
    });
  }

  async function refresh() {
    const snapshot = await inTransaction(async (tx) => {
      const [row] = await tx`SELECT * FROM releasestatus_lock WHERE name = ${LOCK}`;
      const waiting = await tx`
        SELECT name, reason, (extract(epoch FROM since) * 1000)::bigint AS since FROM releasestatus_live_waiters
        WHERE lock = ${LOCK} ORDER BY id`;
      return { state: toState(row), waiting };
    });
    if (!snapshot) return;
    state.current = snapshot.state;
    opts.onState(snapshot.state);
    state.waiting = snapshot.waiting.map((w: { name: string; reason: string; since: string }) => ({
      name: w.name,
      reason: w.reason,
      since: Number(w.since),
    }));
  }

  // Every second: vouch for this replica's waiters, drop the stale ones of dead replicas,
  // end a lease that ran out (on the database's clock), and wake local waiters.
  async function tick() {
    if (state.closing) return;
    // Upserted, not updated: a row dropped as stale while the database was away comes back with its place (its id).
    for (const [id, w] of localWaiters)
      await inTransaction(
        (tx) => tx`INSERT INTO releasestatus_waiters (id, lock, name, reason, replica)
                   VALUES (${id}, ${LOCK}, ${w.name}, ${w.reason}, ${replica})
                   ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()`,
      );
    await inTransaction(
      (tx) => tx`DELETE FROM releasestatus_waiters
                 WHERE heartbeat_at < clock_timestamp() - interval '10 seconds'
                   AND pg_postmaster_start_time() < clock_timestamp() - interval '10 seconds'`,
    );
    if (state.current?.release?.expiresAt != null) await transact(unchanged);
    await refresh();
    for (const wake of [...wakeUps]) wake();
  }

  let listening: { unlisten(): Promise<void> } | null = null;
  let subscribing = false;
  async function subscribe(afresh = false) {
    if (subscribing || state.closing || (listening && !afresh)) return;
    subscribing = true;
    try {
      await listening?.unlisten().catch(() => {});
      listening = await sql.listen(CHANNEL, (payload) => {
        const { replica: from, events } = JSON.parse(payload) as { replica: string; events: Event[] };
        void refresh();
        for (const wake of [...wakeUps]) wake();
        if (from !== replica) opts.onRemoteChange(events);
      });
    } catch {
      listening = null; // the poll keeps things moving meanwhile; the next tick tries again
    } finally {
      subscribing = false;
    }
  }

  // At start-up: configuration errors stop the daemon; an unreachable database does not.
  try {
    await migrate(sql);
    state.migrated = true;
    succeeded();
    await refresh();
  } catch (e) {
    const code = String((e as { errno?: string }).errno ?? "");
    if (CONFIGURATION_ERRORS.has(code))
      throw new StoreOpenError(`PostgreSQL refused ${description}: ${(e as Error).message}; check RS_DB`);
    if (e instanceof StoreOpenError) throw e;
    failed(e as Error);
  }
  void subscribe(); // not awaited: with the database away, LISTEN retries on its own for a long while
  let ticking = false; // a slow tick (the database away) is not stacked with the next
  const ticker = setInterval(async () => {
    if (ticking) return;
    ticking = true;
    if (!listening && state.healthy) void subscribe();
    await tick().finally(() => {
      ticking = false;
    });
  }, POLL_MS);

  return {
    description,
    get state() {
      return state.current;
    },
    get waiting() {
      return state.waiting;
    },
    get healthy() {
      return state.healthy && !state.closing;
    },
    transact: (rule: Rule) => transact(rule),
    refresh,
    startOrWait,
    history: async (limit: number): Promise<Event[]> => {
      const rows = await inTransaction(
        (tx) => tx`SELECT at, kind, release_id, name, reason FROM releasestatus_events
                   WHERE lock = ${LOCK} ORDER BY seq DESC LIMIT ${limit}`,
      );
      return (rows ?? []).map(toEvent);
    },
    /** At shutdown, before the server drains: every waiter here is answered shutting-down. */
    stopWaiting: () => {
      state.closing = true;
      for (const wake of [...wakeUps]) wake();
    },
    close: async () => {
      state.closing = true;
      clearInterval(ticker);
      for (const wake of [...wakeUps]) wake();
      await listening?.unlisten().catch(() => {});
      await sql.close({ timeout: 1 }).catch(() => {});
    },
  };
}

export type PostgresLock = Awaited<ReturnType<typeof openPostgresLock>>;

// Each entry brings the schema from version i to i+1. Times are epoch milliseconds, as in SQLite.
const MIGRATIONS = [
  `CREATE TABLE releasestatus_lock (
     name text PRIMARY KEY, last_id bigint NOT NULL DEFAULT 0,
     release_id bigint, holder text, release_reason text, started_at bigint, expires_at bigint,
     blocked_by text, block_reason text, blocked_since bigint);
   CREATE TABLE releasestatus_events (
     seq bigserial PRIMARY KEY, lock text NOT NULL, at bigint NOT NULL, kind text NOT NULL,
     release_id bigint, name text NOT NULL, reason text NOT NULL);
   CREATE TABLE releasestatus_waiters (
     id bigserial PRIMARY KEY, lock text NOT NULL, name text NOT NULL, reason text NOT NULL, replica text NOT NULL,
     since timestamptz NOT NULL DEFAULT clock_timestamp(), heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp());
   CREATE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds';
   INSERT INTO releasestatus_lock (name) VALUES ('${LOCK}');`,
];

async function migrate(sql: SQL) {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    await tx`CREATE TABLE IF NOT EXISTS releasestatus_schema (version int NOT NULL)`;
    const [row] = await tx`SELECT version FROM releasestatus_schema`;
    const version = row ? Number(row.version) : 0;
    if (version > SCHEMA_VERSION)
      throw new StoreOpenError(
        `the database has releasestatus schema version ${version}, newer than this releasestatus understands (${SCHEMA_VERSION}): run a newer releasestatus`,
      );
    for (let v = version; v < SCHEMA_VERSION; v++) await tx.unsafe(MIGRATIONS[v] as string);
    if (!row) await tx`INSERT INTO releasestatus_schema (version) VALUES (${SCHEMA_VERSION})`;
    else if (version < SCHEMA_VERSION) await tx`UPDATE releasestatus_schema SET version = ${SCHEMA_VERSION}`;
  });
}

type Row = Record<string, string | number | null>;
const num = (v: string | number | null | undefined) => (v === null || v === undefined ? null : Number(v));

function toState(row: Row): State {
  const release: Release | null =
    row.release_id === null
      ? null
      : {
          id: Number(row.release_id),
          name: String(row.holder ?? ""),
          reason: String(row.release_reason ?? ""),
          startedAt: Number(row.started_at),
          expiresAt: num(row.expires_at),
        };
  const block: Block | null =
    row.blocked_since === null
      ? null
      : {
          name: String(row.blocked_by ?? ""),
          reason: String(row.block_reason ?? ""),
          since: Number(row.blocked_since),
        };
  return { lastId: Number(row.last_id), release, block };
}

const toEvent = (row: Row): Event => ({
  at: Number(row.at),
  kind: row.kind as EventKind,
  releaseId: num(row.release_id),
  name: String(row.name),
  reason: String(row.reason),
});
