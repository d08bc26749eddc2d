// State, history and the wait line in one PostgreSQL database that several
// replicas share, through Bun's built-in SQL client. Each decision is taken in
// a transaction that locks the lock's row, on the database's clock; the
// database itself bounds every transaction, so a slow or locked row ends in an
// abort there, never in an answer that a later commit contradicts. Waiter rows
// are kept alive by their replica's heartbeat; NOTIFY tells the other replicas
// of a change, with a poll each second as the safety net.
import { SQL } from "bun";
import { DEFAULT_LOCK, type Event, ROOT, refuse, STORAGE_FAILED, WAITABLE, withUrgent } from "../release.ts";
import {
  ancestorsOf,
  askingOf,
  type Committed,
  catchUp,
  changedEntries,
  type Decide,
  type Decision,
  type Entry,
  type EventRow,
  eventLocks,
  forgets,
  type LockRow,
  newNames,
  noRoom,
  otherRowsOf,
  type Queued,
  queueEvent,
  reachOf,
  StorageError,
  type Store,
  type Stored,
  StoreOpenError,
  scopeOf,
  supersededEvent,
  superseding,
  type TransactOptions,
  toColumns,
  toEvent,
  toStored,
  type Watcher,
  waiterOf,
  waitersAhead,
} from "./store.ts";

const CHANNEL = "releasestatus";
const MIGRATION_LOCK = 0x5253_7431; // pg_advisory_xact_lock key: replicas starting at once migrate one at a time
// Every POLL_MS each replica vouches for its waiters and wakes them: the safety net under
// LISTEN/NOTIFY. A waiter not vouched for in 5 s no longer counts, and its row is deleted after
// 10 s; but in the first seconds after the database (re)started every row counts and none is
// deleted, so that replicas can vouch for their waiters again before a newcomer takes their place.
const POLL_MS = 1000;
// Tests turn the poll's waking off (RS_TEST_POLL_WAKES=0) to show that notifications alone serve the waiters.
const POLL_WAKES = process.env.RS_TEST_POLL_WAKES !== "0";
// The daemon's own bounds, sent as each connection opens (the migration's and LISTEN's too), so that they win
// over what the server, the database or the role sets: the database aborts what runs longer, so no answer
// races a commit, and a server's shorter statement_timeout (or a database set read-only by default) does not
// stop the daemon.
const LIMITS = {
  lock_timeout: "2s",
  statement_timeout: "4s",
  idle_in_transaction_session_timeout: "5s",
  default_transaction_read_only: "off",
};
// A connection the load no longer needs is closed after this long unused.
const IDLE_SECONDS = 10;

// Credentials that do not work, a database that does not exist, or one the role may not connect to, are
// configuration errors.
// A server that is read-only (a standby) cannot hold the lock either.
const CONFIGURATION_ERRORS = new Set(["28P01", "28000", "3D000", "42501", "25006"]);

type Options = { url: string; historyLimit: number; pool: number; now?: () => number };

/** The part of Bun's SQL client the store uses, over a pool of `size` connections at most. */
type Pool = {
  // biome-ignore lint/suspicious/noExplicitAny: rows, as Bun's client types them
  (strings: TemplateStringsArray, ...values: unknown[]): Promise<any>;
  begin: SQL["begin"];
  listen: SQL["listen"];
  close(options: { timeout: number }): Promise<unknown>;
};

/**
 * Clients of one connection each, and the first free one taken: the connections beyond what the load needs go
 * unused and close, so an idle replica keeps one (for its heartbeat) besides LISTEN's. Bun's own pool does not
 * shrink so: it opens all its connections at once and hands transactions to each in turn, keeping all in use.
 */
function connect(url: string, size: number): Pool {
  const clients = Array.from({ length: size }, () => ({
    sql: new SQL(url, { max: 1, idleTimeout: IDLE_SECONDS, connectionTimeout: 3, connection: LIMITS }),
    busy: 0,
  }));
  async function use<T>(work: (sql: SQL) => Promise<T>): Promise<T> {
    const client = clients.find((c) => c.busy === 0) ?? clients.reduce((a, b) => (b.busy < a.busy ? b : a));
    client.busy++;
    try {
      return await work(client.sql);
    } finally {
      client.busy--;
    }
  }
  const first = (clients[0] as { sql: SQL }).sql;
  const query = (strings: TemplateStringsArray, ...values: unknown[]) => use((sql) => sql(strings, ...values));
  return Object.assign(query, {
    begin: ((...args: Parameters<SQL["begin"]>) => use((sql) => sql.begin(...args))) as SQL["begin"],
    listen: first.listen.bind(first), // LISTEN has a connection of its own
    close: (options: { timeout: number }) => Promise.all(clients.map((c) => c.sql.close(options))),
  });
}

export async function openPostgresStore(opts: Options): Promise<Store> {
  const url = new URL(opts.url);
  const description = `PostgreSQL ${url.hostname}:${url.port || 5432}${url.pathname}`;
  const sql = connect(opts.url, opts.pool);
  const replica = crypto.randomUUID();
  const health = { ok: false, failures: 0, retryAt: 0, problem: null as string | null, closing: false };
  let line: Queued[] = []; // every replica's waiters, as last read
  let lineChanges = 0; // a read that began before this replica changed the line is too old to keep
  const ours = new Map<number, Queued>(); // waiter rows this replica vouches for
  const watchers: Watcher[] = [];

  function failed(e: Error) {
    health.failures++;
    health.retryAt = Date.now() + Math.min(250 * 2 ** (health.failures - 1), 5000);
    health.ok = false;
    health.problem = `${description} cannot be used: ${e.message}`;
  }

  function succeeded() {
    const recovered = health.failures > 0;
    health.failures = 0;
    health.retryAt = 0;
    health.ok = true;
    health.problem = null;
    // Bun's LISTEN reconnects on a backoff of up to 30 s: subscribe afresh as soon as the database is back.
    if (recovered) void subscribe(true);
  }

  /** Runs `work` in one transaction that the database bounds in time; throws StorageError when it failed. */
  async function inTransaction<T>(work: (tx: SQL, now: number | null) => Promise<T>): Promise<T> {
    if (Date.now() < health.retryAt) throw new StorageError(health.problem ?? `${description} is failing`);
    try {
      const result = await sql.begin(async (tx) => {
        return work(tx as unknown as SQL, opts.now ? opts.now() : null);
      });
      succeeded();
      return result;
    } catch (e) {
      if (e instanceof StoreOpenError) throw e;
      failed(e as Error);
      // Also when COMMIT's outcome is unknown (the connection broke): the answer is 0, and a lease bounds a grant that did commit.
      throw new StorageError((e as Error).message);
    }
  }

  // The lock's row, the rows above it and below it: `FOR UPDATE` in a transaction that decides.
  const around = (tx: SQL, lock: string) => tx`
    SELECT * FROM releasestatus_lock
    WHERE name = ${lock} OR name = '' OR name = ANY(${ancestorsOf(lock)}::text[])
       OR ${lock} = '' OR substr(name, 1, length(${lock}) + 1) = ${lock} || '/'`;

  // Every transaction that writes events takes the root's row first, and gives the database's time then.
  // It holds the one id counter, and makes changes on overlapping locks (a parent and its child) wait for
  // each other instead of deciding side by side. It also orders the events: a sequence number is taken at
  // insert, not at commit, so without it an event numbered after another could commit first, and a webhook
  // that delivered it would move past the other for good.
  async function takeRoot(tx: SQL): Promise<number> {
    const lockRoot = () => tx`
      SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now
      FROM releasestatus_lock WHERE name = '' FOR UPDATE`;
    let [root] = await lockRoot();
    if (!root) {
      await tx`INSERT INTO releasestatus_lock (name) VALUES ('') ON CONFLICT (name) DO NOTHING`;
      [root] = await lockRoot();
    }
    return Number(root.now);
  }

  // Group commit, as SQLite's: the changes asked for while one transaction runs (or in the same turn of the
  // event loop as the first) are decided one after another, in the order asked, each on what the ones before
  // it wrote, inside the next transaction, and answered only once its commit is known. A failure answers
  // every one of them `storage`. Every change takes the root's row anyway, so one transaction at a time
  // loses nothing, and a batch pays for one round of BEGIN, root lock, COMMIT and fsync instead of each.
  type Asked = { lock: string; decide: Decide; options: TransactOptions; answer: (d: Promise<Decision>) => void };
  let asked: Asked[] = [];
  let committing = false;

  function transact(lock: string, decide: Decide, options: TransactOptions = {}): Promise<Decision> {
    if (health.closing) return Promise.resolve({ outcome: STORAGE_FAILED, committed: null, joined: null });
    return new Promise<Decision>((answer) => {
      if (asked.length === 0 && !committing) setImmediate(commitAsked);
      asked.push({ lock, decide, options, answer });
    });
  }

  async function commitAsked() {
    if (committing) return;
    committing = true;
    while (asked.length > 0) {
      const batch = asked;
      asked = [];
      const decided = commitBatch(batch);
      await decided.catch(() => {});
      batch.forEach((a, i) => {
        a.answer(decided.then((ds) => ds[i] as Decision));
      });
    }
    committing = false;
  }

  async function commitBatch(batch: Asked[]): Promise<Decision[]> {
    try {
      let passed: number[] = []; // waiters out of the line: superseded now, or told of it now
      const decisions = await inTransaction(async (tx, injected): Promise<Decision[]> => {
        passed = []; // a transaction tried again starts afresh
        const dbNow = await takeRoot(tx);
        const out: Decision[] = [];
        for (const { lock, decide, options } of batch)
          out.push(await decideOne(tx, injected ?? dbNow, lock, decide, options, passed));
        return out;
      });
      batch.forEach(({ options }, i) => {
        afterCommit(decisions[i] as Decision, options);
      });
      for (const id of passed) forget(id);
      return decisions;
    } catch (e) {
      if (e instanceof StorageError)
        return batch.map(() => ({ outcome: STORAGE_FAILED, committed: null, joined: null }));
      throw e;
    }
  }

  // One change of a batch, inside its transaction, which already holds the root's row.
  async function decideOne(
    tx: SQL,
    now: number,
    lock: string,
    decide: Decide,
    options: TransactOptions,
    passed: number[], // waiters out of the line: superseded now, or told of it now
  ): Promise<Decision> {
    const claim = options.claim ?? [lock];
    const stored = await rowsOfClaim(tx, claim);
    if (options.freedOf?.length) stored.freedAt = await freedAt(tx, options.freedOf);
    // A waiter a newer start passed is told so at its next attempt, from its row (on any replica).
    if (options.self !== undefined) {
      const [passedSelf] = await tx`
        SELECT superseded FROM releasestatus_waiters WHERE id = ${options.self} AND superseded IS NOT NULL`;
      if (passedSelf) {
        passed.push(options.self);
        return { outcome: refuse("superseded", String(passedSelf.superseded)), committed: null, joined: null };
      }
    }
    const waiters = options.start ? await waitersBefore(tx, options) : [];
    const superseded = superseding(waiters, options, lock);
    if (superseded.refusal) return { outcome: superseded.refusal, committed: null, joined: null };
    const rest = waiters.filter((w) => !superseded.passed.includes(w));
    const ahead = () => waitersAhead(rest, claim, options.self, askingOf(options), options.frozen);
    const before = scopeOf(lock, stored);
    let verdict = decide(stored, now, ahead);
    // The names are counted only when the change would store a new one: every change holds the root's
    // row, so no other replica can store one meanwhile.
    const { room } = options;
    const adding = room ? newNames(stored, verdict) : [];
    if (room && adding.length > 0) {
      const total = await countNames(tx, null);
      const share = room.share ? await countNames(tx, room.share.locks, room.share.who) : 0;
      const full = noRoom(adding[0] as string, room, (locks) => (locks === null ? total : share), adding.length);
      if (full) verdict = { outcome: full, change: null };
    }
    const { outcome, change } = verdict;
    const joining = !outcome.ok && options.join !== undefined && WAITABLE.has(outcome.reason);
    const events = [...(change?.events ?? [])];
    const join = options.join;
    if (join && (outcome.ok || joining))
      for (const w of superseded.passed) {
        const event = supersededEvent(w, join, outcome.ok, now);
        await tx`UPDATE releasestatus_waiters SET done = true, superseded = ${event.reason} WHERE id = ${w.id}`;
        events.push(event);
        passed.push(w.id);
      }
    let joined: Queued | null = null;
    if (joining && options.join) {
      const [w] = await tx`
        INSERT INTO releasestatus_waiters (lock, name, reason, replica, since, made_by, reach, version, urgent,
          override)
        VALUES (${lock}, ${options.join.name}, ${options.join.reason}, ${replica},
          to_timestamp(${now}::bigint / 1000.0), ${options.join.by ?? null}, ${reachColumn(lock, claim)},
          ${options.join.version ?? null}, ${options.join.urgent ?? null}, ${options.join.override ?? null})
        RETURNING id`;
      joined = waiterOf(Number(w.id), lock, options.join, now);
      const reach = reachColumn(lock, claim);
      if (reach !== null) joined.reach = JSON.parse(reach) as string[];
      events.push(queueEvent("waiting", lock, options.join, now, withUrgent(options.join.reason, options.join.urgent)));
    }
    if (events.length === 0) return { outcome, committed: null, joined: null };
    const after = change?.next ?? before;
    const entries = change ? changedEntries(stored, after, change.also) : new Map<string, Entry>();
    for (const [name, entry] of entries) {
      if (forgets(name, entry)) {
        await tx`DELETE FROM releasestatus_lock WHERE name = ${name}`;
        continue;
      }
      const [
        releaseId,
        holder,
        releaseReason,
        startedAt,
        expiresAt,
        blockedBy,
        blockReason,
        blockedSince,
        version,
        releaseBy,
        blockBy,
        otherReleases,
        releaseLocks,
        releaseVersion,
        released,
      ] = toColumns(entry);
      await tx`
        INSERT INTO releasestatus_lock (name, release_id, holder, release_reason, started_at, expires_at,
          blocked_by, block_reason, blocked_since, version, release_by, block_by, other_releases, release_locks,
          release_version, released)
        VALUES (${name}, ${releaseId}, ${holder}, ${releaseReason}, ${startedAt}, ${expiresAt},
          ${blockedBy}, ${blockReason}, ${blockedSince}, ${version}, ${releaseBy}, ${blockBy}, ${otherReleases},
          ${releaseLocks}, ${releaseVersion}, ${released})
        ON CONFLICT (name) DO UPDATE SET release_id = excluded.release_id, holder = excluded.holder,
          release_reason = excluded.release_reason, started_at = excluded.started_at,
          expires_at = excluded.expires_at, blocked_by = excluded.blocked_by,
          block_reason = excluded.block_reason, blocked_since = excluded.blocked_since, version = excluded.version,
          release_by = excluded.release_by, block_by = excluded.block_by, other_releases = excluded.other_releases,
          release_locks = excluded.release_locks, release_version = excluded.release_version,
          released = excluded.released`;
    }
    if (after.lastId !== stored.lastId)
      await tx`UPDATE releasestatus_lock SET last_id = ${after.lastId} WHERE name = ''`;
    if (outcome.ok && options.self !== undefined)
      await tx`UPDATE releasestatus_waiters SET done = true WHERE id = ${options.self}`;
    await record(tx, lock, events, outcome.ok && options.self !== undefined ? claim : []);
    return { outcome, committed: { lock, events, before, after, entries }, joined };
  }

  // The waiters a start must look at: the whole line for a newcomer (all may be ahead of it, and a newest-first
  // one supersedes some); for a waiter trying again, only itself, those before it and the urgent lane, so that the head
  // of a line of ten thousand reads a handful of rows, not the line.
  async function waitersBefore(tx: SQL, options: TransactOptions): Promise<Queued[]> {
    const rows = (
      options.self === undefined
        ? await tx`SELECT id, lock, reach, name, made_by, version, urgent, override FROM releasestatus_live_waiters ORDER BY id`
        : await tx`SELECT id, lock, reach, name, made_by, version, urgent, override FROM releasestatus_live_waiters
                   WHERE id <= ${options.self} OR urgent IS NOT NULL ORDER BY id`
    ) as Record<string, string | null>[];
    return rows.map(toQueued);
  }

  // Once the batch's commit is known: a waiter is vouched for only once its row is committed (a heartbeat
  // would otherwise create it), and one served leaves this replica's line.
  function afterCommit(decision: Decision, options: TransactOptions) {
    const { joined } = decision;
    if (joined) {
      ours.set(joined.id, joined);
      line = [...line, joined]; // seen at once here; the next read brings the others'
      lineChanges++;
    }
    if (decision.outcome.ok && options.self !== undefined) forget(options.self);
  }

  // The rows around every lock of a claim and the other rows of their releases, each locked, in the order of
  // their names: replicas deciding on overlapping claims take them in the same order, and so never deadlock.
  async function rowsOfClaim(tx: SQL, claim: readonly string[]): Promise<Stored> {
    const names = new Set<string>();
    for (const lock of claim) for (const row of (await around(tx, lock)) as LockRow[]) names.add(String(row.name));
    let found = toStored((await lockRows(tx, [...names])) as LockRow[]);
    // Until every release read is read on all its rows: a release on another row may hold more locks still.
    for (let others = otherRowsOf(found); others.length > 0; others = otherRowsOf(found)) {
      const more = toStored((await lockRows(tx, [...found.entries.keys(), ...others])) as LockRow[]);
      if (more.entries.size === found.entries.size) break; // rows that are not there: nothing more to read
      found = more;
    }
    return found;
  }
  const lockRows = (tx: SQL, names: string[]) =>
    tx`SELECT * FROM releasestatus_lock WHERE name = ANY(${names}::text[]) ORDER BY name FOR UPDATE`;

  // When each lock last came free: the newest end of a release on it (a pool takes the child free the longest).
  async function freedAt(tx: SQL, locks: readonly string[]): Promise<Map<string, number>> {
    const rows = (await tx`
      SELECT l AS lock, (SELECT max(at) FROM releasestatus_events e
        WHERE kind IN ('stopped', 'expired', 'abandoned')
          AND (e.lock = l OR (e.locks IS NOT NULL AND e.locks::jsonb ? l))) AS at
      FROM unnest(${[...locks]}::text[]) AS l`) as { lock: string; at: string | null }[];
    return new Map(rows.map((r) => [r.lock, r.at === null ? Number.NEGATIVE_INFINITY : Number(r.at)]));
  }

  // The names that count against RS_MAX_LOCKS (not the root, not the original's lock); with `locks`, only
  // those that are one of them or under one.
  // With `by`, only the names it holds (a release, in the columns or among other_releases, or the block).
  async function countNames(tx: SQL, locks: readonly string[] | null, by?: string): Promise<number> {
    const [{ n }] = await tx`
      SELECT count(*) AS n FROM releasestatus_lock
      WHERE name <> '' AND name <> ${DEFAULT_LOCK} AND (${locks === null}::boolean OR EXISTS (
        SELECT 1 FROM unnest(${locks ?? []}::text[]) AS s(lock)
        WHERE name = s.lock OR substr(name, 1, length(s.lock) + 1) = s.lock || '/'))
        AND (${by === undefined}::boolean OR release_by = ${by ?? ""} OR block_by = ${by ?? ""} OR EXISTS (
          SELECT 1 FROM json_array_elements(coalesce(nullif(other_releases, ''), '[]')::json) AS r
          WHERE r->>'by' = ${by ?? ""}))`;
    return Number(n);
  }

  // Appends events, prunes the oldest, and tells the other replicas (NOTIFY is delivered on commit); `freed` is the
  // claim of a waiter that left the line in it (served, or gone), whose followers on other replicas may go now.
  async function record(tx: SQL, lock: string, events: Event[], freed: readonly string[] = []) {
    for (const e of events)
      await tx`INSERT INTO releasestatus_events (lock, at, kind, release_id, name, reason, made_by, status, locks, version)
               VALUES (${e.lock}, ${e.at}, ${e.kind}, ${e.releaseId}, ${e.name}, ${e.reason}, ${e.by ?? null},
                 ${e.status ?? null}, ${eventLocks(e)}, ${e.version ?? null})`;
    await tx`DELETE FROM releasestatus_events WHERE seq <= (SELECT max(seq) FROM releasestatus_events) - ${opts.historyLimit}`;
    await tx`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ replica, lock, events, ...(freed.length ? { freed } : {}) })})`;
  }

  function forget(id: number) {
    ours.delete(id);
    lineChanges++;
    line = line.filter((w) => w.id !== id);
  }

  async function leave(lock: string, id: number, why: string): Promise<Committed | null> {
    forget(id);
    try {
      return await inTransaction(async (tx, injected) => {
        const dbNow = await takeRoot(tx); // first, as a change does: a waiter's row after the root's, never before
        const [gone] = await tx`
          UPDATE releasestatus_waiters SET done = true WHERE id = ${id} AND NOT done
          RETURNING name, reason, made_by, lock, reach`;
        if (!gone) return null;
        const at = injected ?? dbNow;
        const events = [
          queueEvent(
            "left-queue",
            lock,
            { name: gone.name, reason: gone.reason, by: gone.made_by ?? undefined },
            at,
            why,
          ),
        ];
        await record(tx, lock, events, reachOf(toQueued({ id, ...gone })));
        return { lock, events, before: null, after: null, entries: new Map() };
      });
    } catch (e) {
      if (e instanceof StorageError) return null; // the row goes once no heartbeat vouches for it
      throw e;
    }
  }

  // Reads of what is committed, shared: every caller that asks before a read is sent is answered by that
  // read, which is so taken after each of them asked. One read per lock is in flight at a time, and at
  // most one more waits to be sent; under load one round trip answers many refusals.
  type Peeked = Awaited<ReturnType<typeof readCommitted>>;
  const peeks = new Map<string, { inFlight: Promise<unknown> | null; next: Promise<Peeked> | null }>();
  function peek(lock: string): Promise<Peeked> {
    let p = peeks.get(lock);
    if (!p) {
      if (peeks.size >= 1024) peeks.clear(); // many lock names: forget the idle ones
      p = { inFlight: null, next: null };
      peeks.set(lock, p);
    }
    const slot = p;
    if (slot.next) return slot.next; // not sent yet: it will be taken after this caller asked
    const sent = (slot.inFlight ?? Promise.resolve()).then(
      () => {
        slot.next = null; // from here on, a new caller needs a read sent after it asked
        const read = readCommitted(lock);
        slot.inFlight = read.catch(() => {});
        return read;
      },
      () => {},
    ) as Promise<Peeked>;
    slot.next = sent;
    return sent;
  }

  // One round trip: the rows around the lock, each with the waiters ahead and the database's clock.
  async function readCommitted(lock: string) {
    if (Date.now() < health.retryAt) throw new StorageError(health.problem ?? `${description} is failing`);
    try {
      const rows = await sql`
        SELECT l.*, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now,
          (SELECT count(*) FROM releasestatus_live_waiters
           WHERE lock = ${lock} OR lock = ANY(${ancestorsOf(lock)}::text[])
              OR ${lock} = '' OR substr(lock, 1, length(${lock}) + 1) = ${lock} || '/') AS ahead
        FROM releasestatus_lock l
        WHERE name = ${lock} OR name = '' OR name = ANY(${ancestorsOf(lock)}::text[])
           OR ${lock} = '' OR substr(name, 1, length(${lock}) + 1) = ${lock} || '/'`;
      succeeded();
      const first = rows[0] as Record<string, string> | undefined;
      return {
        stored: toStored(rows as LockRow[]),
        ahead: Number(first?.ahead ?? 0),
        now: opts.now ? opts.now() : Number(first?.now ?? Date.now()),
      };
    } catch (e) {
      failed(e as Error);
      throw new StorageError((e as Error).message);
    }
  }

  // A read that also brings the whole wait line, unless this replica changed the line meanwhile.
  async function readWith(rows: (tx: SQL) => Promise<unknown>): Promise<Stored> {
    const changesBefore = lineChanges;
    const [found, waiters] = await inTransaction(async (tx) => [
      await rows(tx),
      await tx`
        SELECT id, lock, name, reason, made_by, reach, version, urgent, override,
          (extract(epoch FROM since) * 1000)::bigint AS since
        FROM releasestatus_live_waiters ORDER BY id`,
    ]);
    if (lineChanges === changesBefore) line = (waiters as Record<string, string | null>[]).map(toQueued);
    return toStored(found as LockRow[]);
  }

  // Every second: vouch for this replica's waiters, drop the stale ones of dead replicas, and
  // tell the engine to look again (it re-reads, ends a lease that ran out, and wakes waiters).
  async function tick() {
    try {
      await inTransaction(async (tx) => {
        // Upserted, not updated: a row dropped as stale while the database was away comes back with its place (its id).
        // One statement for all of them (as JSON, which keeps a waiter without a token's null): a round trip
        // per waiter made the heartbeat of a line of ten thousand take seconds.
        const rows = [...ours].map(([id, w]) => ({
          id,
          lock: w.lock,
          name: w.name,
          reason: w.reason,
          made_by: w.by ?? null,
          reach: reachColumn(w.lock, reachOf(w)),
          version: w.version ?? null,
          urgent: w.urgent ?? null,
          override: w.override ?? null,
        }));
        if (rows.length > 0)
          await tx`INSERT INTO releasestatus_waiters (id, lock, name, reason, replica, made_by, reach, version, urgent,
                     override)
                   SELECT w.id, w.lock, w.name, w.reason, ${replica}, w.made_by, w.reach, w.version, w.urgent,
                     w.override
                   FROM jsonb_to_recordset(${JSON.stringify(rows)}::text::jsonb)
                     AS w(id bigint, lock text, name text, reason text, made_by text, reach text, version text,
                          urgent text, override text)
                   ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()
                   WHERE NOT releasestatus_waiters.done`;
        await tx`DELETE FROM releasestatus_waiters
                 WHERE heartbeat_at < clock_timestamp() - interval '10 seconds'
                   AND pg_postmaster_start_time() < clock_timestamp() - interval '10 seconds'`;
      });
    } catch {}
    if (POLL_WAKES) for (const w of watchers) w(ROOT, []); // the root overlaps every lock: everyone looks again
  }

  let listening: { unlisten(): Promise<void> } | null = null;
  let subscribing = false;
  async function subscribe(afresh = false) {
    if (subscribing || health.closing || (listening && !afresh)) return;
    subscribing = true;
    try {
      await listening?.unlisten().catch(() => {});
      listening = await sql.listen(CHANNEL, (payload) => {
        const {
          replica: from,
          lock,
          events,
          freed = [],
        } = JSON.parse(payload) as { replica: string; lock: string; events: Event[]; freed?: string[] };
        if (from !== replica) for (const w of watchers) w(lock, events, freed);
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
    succeeded();
  } catch (e) {
    const code = String((e as { errno?: string }).errno ?? "");
    if (e instanceof StoreOpenError) throw new StoreOpenError(`${description}: ${e.message}`);
    if (CONFIGURATION_ERRORS.has(code))
      throw new StoreOpenError(`PostgreSQL refused ${description}: ${(e as Error).message}; check RS_DB`);
    failed(e as Error);
  }
  let migrated = health.ok;
  // With the database there, the daemon answers only once it hears the other replicas: a change made through
  // another one in its first moments would otherwise reach no /events stream here (the poll reads the state
  // afresh, but carries no events). With the database away, LISTEN retries on its own for a long while, so
  // it is not waited for then, nor for more than two seconds.
  const subscribed = subscribe();
  if (migrated) await Promise.race([subscribed, Bun.sleep(2000)]);
  let ticking = false; // a slow tick (the database away) is not stacked with the next
  const ticker = setInterval(async () => {
    if (ticking || health.closing) return;
    ticking = true;
    try {
      if (!migrated) {
        await migrate(sql).then(succeeded, failed);
        migrated = health.ok;
      }
      if (!listening && health.ok) void subscribe();
      await tick();
    } finally {
      ticking = false;
    }
  }, POLL_MS);

  return {
    description,
    exclusive: false,
    health: () => ({ writable: health.ok, readable: health.ok, problem: health.problem }),
    readAll: () => readWith((tx) => tx`SELECT * FROM releasestatus_lock`),
    read: (lock) => readWith((tx) => around(tx, lock)),
    peek,
    transact,
    leave,
    mark: async (mark, events) => {
      try {
        return await inTransaction(async (tx) => {
          await takeRoot(tx); // its events are ordered with every change's
          const [added] = await tx`
            INSERT INTO releasestatus_freeze_marks (window_key, lock, kind, at)
            VALUES (${mark.window}, ${mark.lock}, ${mark.kind}, ${mark.at})
            ON CONFLICT DO NOTHING RETURNING 1 AS added`;
          if (!added) return null; // another replica, or an earlier run, recorded it
          await record(tx, mark.lock, events);
          return { lock: mark.lock, events, before: null, after: null, entries: new Map() };
        });
      } catch (e) {
        if (e instanceof StorageError) return null;
        throw e;
      }
    },
    markNext: async (series, lock, next) => {
      try {
        return await inTransaction(async (tx) => {
          // First the root's row, as every change does: its events are ordered with theirs, and replicas looking at
          // once take turns, each deciding on the latest mark the one before it wrote.
          await takeRoot(tx);
          const [row] = await tx`
            SELECT kind, at FROM releasestatus_freeze_marks WHERE window_key = ${series} AND lock = ${lock}
            ORDER BY at DESC LIMIT 1`;
          const [newest] = await tx`SELECT at FROM releasestatus_events ORDER BY seq DESC LIMIT 1`;
          const latest = row ? { window: series, lock, kind: String(row.kind), at: Number(row.at) } : null;
          const found = next(latest, newest ? Number(newest.at) : -Infinity);
          if (!found) return null;
          for (const m of found.marks)
            await tx`INSERT INTO releasestatus_freeze_marks (window_key, lock, kind, at)
                     VALUES (${m.window}, ${m.lock}, ${m.kind}, ${m.at}) ON CONFLICT DO NOTHING`;
          await record(tx, lock, found.events);
          return { lock, events: found.events, before: null, after: null, entries: new Map() };
        });
      } catch (e) {
        if (e instanceof StorageError) return null;
        throw e;
      }
    },
    locksMarked: async (series, kind) => {
      const rows = await inTransaction(
        (tx) => tx`
          SELECT lock FROM releasestatus_freeze_marks AS m WHERE window_key = ${series} AND kind = ${kind}
            AND at = (SELECT max(at) FROM releasestatus_freeze_marks WHERE window_key = ${series} AND lock = m.lock)`,
      );
      return (rows as { lock: string }[]).map((r) => r.lock);
    },
    marked: async (window) => {
      const rows = await inTransaction(
        (tx) => tx`SELECT 1 FROM releasestatus_freeze_marks WHERE window_key = ${window} LIMIT 1`,
      );
      return (rows as unknown[]).length > 0;
    },
    waiting: () => line,
    history: async (limit, lock) => {
      const rows = await inTransaction((tx) =>
        lock === undefined
          ? tx`SELECT lock, at, kind, release_id, name, reason, made_by, locks, version FROM releasestatus_events
               ORDER BY seq DESC LIMIT ${limit}`
          : tx`SELECT lock, at, kind, release_id, name, reason, made_by, locks, version FROM releasestatus_events
               WHERE lock = ${lock} OR ${lock} = '' OR substr(lock, 1, length(${lock}) + 1) = ${lock} || '/'
                  OR (locks IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(locks::jsonb) AS l
                        WHERE l = ${lock} OR substr(l, 1, length(${lock}) + 1) = ${lock} || '/'))
               ORDER BY seq DESC LIMIT ${limit}`,
      );
      return (rows as EventRow[]).map(toEvent);
    },
    watch: (changed) => {
      watchers.push(changed);
    },
    backup: () => null,
    outbox: {
      claim: async (webhook, limit, backlog) => {
        try {
          return await inTransaction(async (tx) => {
            await tx`
              INSERT INTO releasestatus_webhooks (key, delivered)
              SELECT ${webhook}, coalesce(max(seq), 0) FROM releasestatus_events
              ON CONFLICT (key) DO NOTHING`;
            // One replica delivers for a webhook; its claim lapses 30 s after its last look, if it dies.
            const [row] = await tx`
              UPDATE releasestatus_webhooks SET holder = ${replica}, held_until = clock_timestamp() + interval '30 seconds'
              WHERE key = ${webhook} AND (holder IS NULL OR holder = ${replica} OR held_until < clock_timestamp())
              RETURNING delivered, attempts, next_at, dropped`;
            if (!row) return null;
            const [span] = await tx`SELECT min(seq) AS oldest, max(seq) AS newest FROM releasestatus_events`;
            const newest = Number(span?.newest ?? 0);
            const oldest = span?.oldest == null ? null : Number(span.oldest);
            const stored = {
              delivered: Number(row.delivered),
              attempts: Number(row.attempts),
              nextAt: Number(row.next_at),
              dropped: Number(row.dropped),
            };
            const { progress, skipped } = catchUp(stored, { oldest, newest }, backlog);
            if (skipped > 0)
              await tx`UPDATE releasestatus_webhooks SET delivered = ${progress.delivered}, dropped = dropped + ${skipped}
                       WHERE key = ${webhook}`;
            const rows = await tx`
              SELECT seq, lock, at, kind, release_id, name, reason, made_by, status, locks, version FROM releasestatus_events
              WHERE seq > ${progress.delivered} ORDER BY seq LIMIT ${limit}`;
            const events = (rows as (EventRow & { seq: string })[]).map((r) => ({
              seq: Number(r.seq),
              event: toEvent(r),
            }));
            return { progress, events, newest };
          });
        } catch (e) {
          if (e instanceof StorageError) return null;
          throw e;
        }
      },
      advance: async (webhook, seq, dropped) => {
        await inTransaction(
          (tx) => tx`UPDATE releasestatus_webhooks SET delivered = greatest(delivered, ${seq}),
                       dropped = dropped + ${dropped}, attempts = 0, next_at = 0
                     WHERE key = ${webhook} AND holder = ${replica}`,
        ).catch(() => {}); // not recorded: the event is sent again, as at-least-once allows
      },
      retry: async (webhook, attempts, at) => {
        await inTransaction(
          (tx) => tx`UPDATE releasestatus_webhooks SET attempts = ${attempts}, next_at = ${at}
                     WHERE key = ${webhook} AND holder = ${replica}`,
        ).catch(() => {});
      },
    },
    close: async () => {
      health.closing = true;
      clearInterval(ticker);
      // Hand the webhooks this replica delivered for to the others at once.
      await sql`UPDATE releasestatus_webhooks SET holder = NULL WHERE holder = ${replica}`.catch(() => {});
      await listening?.unlisten().catch(() => {});
      await sql.close({ timeout: 1 }).catch(() => {});
    },
  };
}

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
   INSERT INTO releasestatus_lock (name) VALUES ('default');`,
  // version: grows with every change to a lock. done: a waiter that was served or left keeps its row
  // until it ages out, so that a heartbeat racing its end cannot bring it back.
  `ALTER TABLE releasestatus_lock ADD COLUMN version bigint NOT NULL DEFAULT 0;
   CREATE INDEX releasestatus_events_by_lock ON releasestatus_events (lock, seq);
   ALTER TABLE releasestatus_waiters ADD COLUMN done boolean NOT NULL DEFAULT false;
   DROP VIEW releasestatus_live_waiters;
   CREATE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE NOT done AND (heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds');`,
  // Named locks in a tree: the root ('') holds the one id counter, and the block the original's /block
  // made, which blocked everything; the default lock keeps its release and its history.
  `INSERT INTO releasestatus_lock (name, last_id, blocked_by, block_reason, blocked_since)
     SELECT '', last_id, blocked_by, block_reason, blocked_since FROM releasestatus_lock WHERE name = 'default';
   UPDATE releasestatus_lock SET blocked_by = NULL, block_reason = NULL, blocked_since = NULL WHERE name = 'default';`,
  // Named tokens: whose token started a release, made a block, made an event, or queued a waiter.
  `ALTER TABLE releasestatus_lock ADD COLUMN release_by text, ADD COLUMN block_by text;
   ALTER TABLE releasestatus_events ADD COLUMN made_by text;
   ALTER TABLE releasestatus_waiters ADD COLUMN made_by text;
   CREATE OR REPLACE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE NOT done AND (heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds');`,
  // The freeze calendar: each boundary of a window on a lock, once recorded (frozen, thawed), by any replica.
  `CREATE TABLE releasestatus_freeze_marks (
     window_key text NOT NULL, lock text NOT NULL, kind text NOT NULL, at bigint NOT NULL,
     PRIMARY KEY (window_key, lock, kind, at));`,
  // Webhooks: how far each has got through the events (the events are the outbox), and which replica delivers.
  `CREATE TABLE releasestatus_webhooks (
     key text PRIMARY KEY, delivered bigint NOT NULL, attempts int NOT NULL DEFAULT 0,
     next_at bigint NOT NULL DEFAULT 0, dropped bigint NOT NULL DEFAULT 0,
     holder text, held_until timestamptz);`,
  // What the lock is after each event, as webhooks say it (sent later, when the lock may have changed again).
  `ALTER TABLE releasestatus_events ADD COLUMN status text;`,
  // Lock names that hold nothing are forgotten (their history stays): those kept before are let go too. The
  // root keeps the highest version, so that a name used again starts above what a cache may remember of it.
  `UPDATE releasestatus_lock SET version = (SELECT max(version) FROM releasestatus_lock) WHERE name = '';
   DELETE FROM releasestatus_lock
   WHERE release_id IS NULL AND blocked_since IS NULL AND name NOT IN ('', 'default');`,
  // Locks with a limit: the releases after the oldest (which keeps the columns above), as a JSON list.
  `ALTER TABLE releasestatus_lock ADD COLUMN other_releases text;`,
  // Claims of several locks: every lock of the release in the columns, and of an event's release; every lock a
  // waiter's claim may hold (JSON lists; NULL for one lock, as before).
  `ALTER TABLE releasestatus_lock ADD COLUMN release_locks text;
   ALTER TABLE releasestatus_events ADD COLUMN locks text;
   ALTER TABLE releasestatus_waiters ADD COLUMN reach text;
   CREATE OR REPLACE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE NOT done AND (heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds');`,
  // Versions (version=) of a release, an event and a waiter; a waiter's urgent reason; and, for a waiter a
  // newer start superseded on a newest-first lock, the words it is answered with (its row is done then).
  `ALTER TABLE releasestatus_lock ADD COLUMN release_version text;
   ALTER TABLE releasestatus_events ADD COLUMN version text;
   ALTER TABLE releasestatus_waiters ADD COLUMN version text, ADD COLUMN urgent text, ADD COLUMN superseded text;
   CREATE OR REPLACE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE NOT done AND (heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds');`,
  // A newest-first lock's last granted version (JSON: version, at, name), kept with its row: stale is decided
  // from it, not from a history that is pruned. NULL in rows from before, as on locks of a fifo line.
  `ALTER TABLE releasestatus_lock ADD COLUMN released text;`,
  // A waiter's override reason: waiters a freeze stops do not stand in front of it (docs/freezes.md: Override).
  `ALTER TABLE releasestatus_waiters ADD COLUMN override text;
   CREATE OR REPLACE VIEW releasestatus_live_waiters AS SELECT * FROM releasestatus_waiters
     WHERE NOT done AND (heartbeat_at > clock_timestamp() - interval '5 seconds'
        OR pg_postmaster_start_time() > clock_timestamp() - interval '5 seconds');`,
];
const SCHEMA_VERSION = MIGRATIONS.length;

// The tables, the view and the sequences the daemon uses: a role that does not own them needs grants on them.
const TABLES = [
  "releasestatus_schema",
  "releasestatus_lock",
  "releasestatus_events",
  "releasestatus_waiters",
  "releasestatus_freeze_marks",
  "releasestatus_webhooks",
];
const VIEWS = ["releasestatus_live_waiters"];
const SEQUENCES = ["releasestatus_events_seq_seq", "releasestatus_waiters_id_seq"];
const INSUFFICIENT_PRIVILEGE = "42501";

type Place = { role: string; schema: string | null; may_create: boolean | null };

// The tables are created in the first schema of the role's search_path, which the role must be allowed to create in.
function cannotCreate({ role, schema }: Place): string {
  if (schema === null)
    return `the role ${role} has no schema to create the releasestatus tables in (its search_path names none that exists): create one it may CREATE in, or ALTER ROLE ${role} SET search_path to one`;
  return `the role ${role} may not CREATE in schema ${schema}: GRANT CREATE ON SCHEMA ${schema} TO ${role}, or create the tables as their owner first`;
}

/** The GRANT statements the role lacks on the tables that exist (none when it owns them). */
async function missingGrants(tx: SQL, role: string): Promise<string[]> {
  const [missing] = await tx`
    SELECT array(SELECT t FROM unnest(${TABLES}::text[]) t
                 WHERE NOT coalesce(has_table_privilege(to_regclass(t), 'SELECT') AND has_table_privilege(to_regclass(t), 'INSERT')
                   AND has_table_privilege(to_regclass(t), 'UPDATE') AND has_table_privilege(to_regclass(t), 'DELETE'), true)) AS tables,
           array(SELECT v FROM unnest(${VIEWS}::text[]) v
                 WHERE NOT coalesce(has_table_privilege(to_regclass(v), 'SELECT'), true)) AS views,
           array(SELECT s FROM unnest(${SEQUENCES}::text[]) s
                 WHERE NOT coalesce(has_sequence_privilege(to_regclass(s), 'USAGE'), true)) AS sequences`;
  const { tables, views, sequences } = missing as Record<string, string[]>;
  return [
    ...(tables?.length ? [`GRANT SELECT, INSERT, UPDATE, DELETE ON ${tables.join(", ")} TO ${role}`] : []),
    ...(views?.length ? [`GRANT SELECT ON ${views.join(", ")} TO ${role}`] : []),
    ...(sequences?.length ? [`GRANT USAGE ON SEQUENCE ${sequences.join(", ")} TO ${role}`] : []),
  ];
}

// A privilege missing is a configuration error (StoreOpenError), named with the grant that would mend it.
async function migrate(sql: Pool) {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`;
    const [place] = (await tx`
      SELECT quote_ident(current_user) AS role, quote_ident(current_schema()) AS schema,
             has_schema_privilege(current_schema(), 'CREATE') AS may_create,
             to_regclass('releasestatus_schema') IS NOT NULL AS made`) as (Place & { made: boolean })[];
    if (!place) throw new Error("the database answered no row");
    // Created only when missing: tables an administrator created as their owner need no CREATE.
    if (!place.made) {
      if (!place.may_create) throw new StoreOpenError(cannotCreate(place));
      await tx`CREATE TABLE releasestatus_schema (version int NOT NULL)`;
    }
    const grants = await missingGrants(tx as unknown as SQL, place.role);
    if (grants.length)
      throw new StoreOpenError(
        `the role ${place.role} may not use the releasestatus tables, which another role owns: ${grants.join("; ")}`,
      );
    const [row] = await tx`SELECT version FROM releasestatus_schema`;
    const version = row ? Number(row.version) : 0;
    if (version > SCHEMA_VERSION)
      throw new StoreOpenError(
        `the database has releasestatus schema version ${version}, newer than this releasestatus understands (${SCHEMA_VERSION}): run a newer releasestatus`,
      );
    try {
      for (let v = version; v < SCHEMA_VERSION; v++) await tx.unsafe(MIGRATIONS[v] as string);
    } catch (e) {
      if ((e as { errno?: string }).errno !== INSUFFICIENT_PRIVILEGE) throw e;
      throw new StoreOpenError(
        place.may_create
          ? `the role ${place.role} may not bring the releasestatus tables from schema version ${version} to ${SCHEMA_VERSION} (${(e as Error).message}): run this releasestatus once as their owner`
          : cannotCreate(place),
      );
    }
    if (!row) await tx`INSERT INTO releasestatus_schema (version) VALUES (${SCHEMA_VERSION})`;
    else if (version < SCHEMA_VERSION) await tx`UPDATE releasestatus_schema SET version = ${SCHEMA_VERSION}`;
  });
}

// A waiter's row as the store reads it back.
const toQueued = (w: Record<string, string | number | null>): Queued => {
  const q: Queued = {
    id: Number(w.id),
    lock: String(w.lock),
    name: String(w.name ?? ""),
    reason: String(w.reason ?? ""),
    since: Number(w.since ?? 0),
    by: w.made_by == null ? undefined : String(w.made_by),
  };
  if (w.reach != null) q.reach = JSON.parse(String(w.reach)) as string[];
  if (w.version != null) q.version = String(w.version);
  if (w.urgent != null) q.urgent = String(w.urgent);
  if (w.override != null) q.override = String(w.override);
  return q;
};

// The reach column: NULL for a waiter on one exact lock, as rows were before claims.
const reachColumn = (lock: string, reach: readonly string[]): string | null =>
  reach.length === 1 && reach[0] === lock ? null : JSON.stringify(reach);
