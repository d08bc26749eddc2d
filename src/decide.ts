// Decisions over the stored rows, as one transaction sees them: a rule of release.ts on one lock, or a
// claim's start over several, each after ending the leases that ran out, and then settled, so that a
// release holding several locks is ended or renewed on every one of its rows at once. Pure: the stores
// run these inside their write transaction, the engine on its cache to answer a refusal at once.
import { type Children, isPool, poolParent, reach } from "./claim.ts";
import {
  andThen,
  type Change,
  type Event,
  expire,
  type Frozen,
  holding,
  type Neighbour,
  newRelease,
  type Outcome,
  type Refusal,
  type Release,
  type Released,
  refuse,
  type StartRequest,
  type State,
  startEvents,
  whyNotStart,
} from "./release.ts";
import { type Decide, type Entry, type Stored, scopeOf, type Verdict } from "./store/store.ts";
import { compareVersions } from "./version.ts";
import { describeStale } from "./words.ts";

/** A transition on one lock (a stop, a renewal, a block): the state as stored and the store's time. */
export type Rule = (s: State, now: number) => Outcome;

/** What the configuration and the calendar say about locks, asked at each decision. */
export type Setup = {
  limitOf(lock: string): number; // how many releases may hold it at once
  children: Children; // its declared children, for pools
  newest(lock: string): boolean; // whether its line keeps only the newest version (queue = "newest")
  frozen(lock: string, now: number): Frozen | null; // the freeze in force on it
  cached?(lock: string, stored: Stored): State | undefined; // a state already worked out for these very rows
};

/** A decision's working copy of the rows: each lock as the decision has left it so far. */
class Rows {
  private readonly written = new Map<string, Entry>(); // only what changed: the stored rows are many
  lastId: number;
  constructor(
    readonly stored: Stored,
    private readonly setup: Setup,
  ) {
    this.lastId = stored.lastId;
  }

  get(lock: string): Entry | undefined {
    return this.written.get(lock) ?? this.stored.entries.get(lock);
  }

  /** The state a rule sees for `lock`, with its limit. */
  state(lock: string): State {
    const known = this.written.size === 0 ? this.setup.cached?.(lock, this.stored) : undefined;
    if (known) return known;
    const entries = this.written.size === 0 ? this.stored.entries : new Map([...this.stored.entries, ...this.written]);
    const s = scopeOf(lock, { lastId: this.lastId, entries });
    const limit = this.setup.limitOf(lock);
    return limit === s.limit ? s : { ...s, limit };
  }

  /** Takes in what a state of one lock says of it and of the locks around it. */
  put(s: State) {
    this.lastId = Math.max(this.lastId, s.lastId);
    this.set({ lock: s.lock, releases: s.releases, block: s.block });
    for (const n of s.around) this.set(n);
  }

  set(n: Neighbour) {
    const before = this.get(n.lock);
    const released = n.released ?? before?.released;
    if (before && before.releases === n.releases && before.block === n.block && before.released === released) return;
    if (!before && n.releases.length === 0 && n.block === null && released === undefined) return;
    const entry: Entry = { releases: n.releases, block: n.block, version: before?.version ?? 0 };
    if (released) entry.released = released;
    this.written.set(n.lock, entry);
  }

  /** Records the version a start granted on a newest-first lock, in the same write as the grant. */
  release(lock: string, released: Released) {
    const e = this.get(lock);
    this.set({ lock, releases: e?.releases ?? [], block: e?.block ?? null, released });
  }

  /** Every row that differs from what is stored, as it is now. */
  changed(): Neighbour[] {
    const out: Neighbour[] = [];
    for (const [lock, e] of this.written) {
      const before = this.stored.entries.get(lock);
      if (before && before.releases === e.releases && before.block === e.block && before.released === e.released)
        continue;
      out.push({ lock, releases: e.releases, block: e.block, ...(e.released ? { released: e.released } : {}) });
    }
    return out;
  }
}

/** A rule on one lock, after ending any lease that ran out before it: the refusal may carry that change. */
export function decideOn(lock: string, rule: Rule, setup: Setup): Decide {
  return (stored, now) => {
    const rows = new Rows(stored, setup);
    const s = rows.state(lock);
    const expired = expire(s, now);
    const outcome = expired ? andThen(expired, (x) => rule(x, now)) : rule(s, now);
    const change: Change | null = outcome.ok ? outcome : expired;
    return settled(rows, outcome, change);
  };
}

/**
 * A claim's start: every lock it names (a pool: its child free the longest that may be taken), or none.
 * Refused for the first lock that cannot be held, or `queued` when an earlier overlapping claim waits.
 */
export function decideStart(
  claim: readonly string[],
  req: StartRequest,
  setup: Setup,
  stillAllowed: () => Refusal | null,
): Decide {
  return (stored, now, ahead) => {
    const rows = new Rows(stored, setup);
    const events: Event[] = [];
    for (const lock of reach(claim, setup.children)) {
      const expired = expire(rows.state(lock), now);
      if (!expired) continue;
      rows.put(expired.next);
      events.push(...expired.events);
    }
    const expiry = (): Change | null =>
      events.length === 0
        ? null
        : { ok: true, next: rows.state(firstLock(claim, setup)), events, also: rows.changed() };
    const denied = stillAllowed() ?? stale(claim, req, rows, setup);
    if (denied) return settled(rows, denied, expiry());
    const held: string[] = [];
    let frozen: Frozen | null = null;
    for (const name of claim) {
      const chosen = isPool(name) ? choose(name, rows, req, now, setup) : admits(rows.state(name), req, now, setup);
      if ("ok" in chosen) return settled(rows, chosen, expiry());
      held.push(chosen.lock);
      frozen = frozen ?? chosen.frozen;
    }
    // Waiters the freeze stops are not counted ahead of an override (see waitersAhead in store.ts).
    const waiting = ahead();
    if (waiting > 0) return settled(rows, refuse("queued", `${waiting} waiting ahead of you`), expiry());
    const release = newRelease(rows.lastId, req, now, held);
    for (const lock of held) {
      const s = rows.state(lock);
      rows.put(holding({ ...s, lastId: release.id }, [...s.releases, release]));
      if (release.version !== undefined && setup.newest(lock))
        rows.release(lock, { version: release.version, at: now, name: req.name });
    }
    const granted: Change = {
      ok: true,
      next: rows.state(held[0] as string),
      events: [...events, ...startEvents(release, held[0] as string, req, frozen)],
      release,
      locks: held,
    };
    return settled(rows, granted, granted);
  };
}

/**
 * On a newest-first lock, a start older than a release running there or than the last version granted there
 * (stored with the lock, so neither a pruned history nor a restart forgets it) is refused `stale`, unless it
 * overrides (a deliberate roll back) what was out when it asked: a version that went out while an override
 * waited in line (one kept there during a freeze, say) is not rolled back by it. A pool is never compared: its
 * members may run different versions. Null: it is not older, or it has no version.
 */
function stale(claim: readonly string[], req: StartRequest, rows: Rows, setup: Setup): Refusal | null {
  const version = req.version;
  if (version === undefined) return null;
  const overridden = (at: number) => req.override !== undefined && (req.joinedAt === undefined || at <= req.joinedAt);
  for (const lock of claim) {
    if (isPool(lock) || !setup.newest(lock)) continue;
    const running = rows.state(lock).releases.map((r) => ({ version: r.version, at: r.startedAt, name: r.name }));
    const known = [...running, rows.get(lock)?.released];
    for (const newer of known)
      if (newer?.version !== undefined && compareVersions(version, newer.version) < 0 && !overridden(newer.at))
        return refuse("stale", describeStale(version, { ...newer, version: newer.version }, lock));
  }
  return null;
}

// A lock in the tree to name a change that only ended leases: the claim's first, or its pool's first child.
const firstLock = (claim: readonly string[], setup: Setup): string =>
  reach(claim.slice(0, 1), setup.children)[0] ?? (claim[0] as string);

type Admitted = { lock: string; frozen: Frozen | null };

const admits = (s: State, req: StartRequest, now: number, setup: Setup): Refusal | Admitted => {
  const why = whyNotStart(s, req, () => setup.frozen(s.lock, now));
  return "ok" in why ? why : { lock: s.lock, frozen: why.frozen };
};

// A pool's child that may be taken: the one free the longest (never used first), ties by name.
function choose(pool: string, rows: Rows, req: StartRequest, now: number, setup: Setup): Refusal | Admitted {
  const freed = rows.stored.freedAt;
  const since = (lock: string) => freed?.get(lock) ?? Number.NEGATIVE_INFINITY;
  const children = [...setup.children(poolParent(pool))].sort((a, b) => since(a) - since(b) || (a < b ? -1 : 1));
  let first: Refusal | null = null;
  for (const child of children) {
    const chosen = admits(rows.state(child), req, now, setup);
    if (!("ok" in chosen)) return chosen;
    first = first ?? chosen;
  }
  const why = first ?? refuse("invalid", `${pool} has no declared children`);
  return { ...why, message: `no lock of ${pool} can be taken now: ${why.message}` };
}

/**
 * The verdict, with its change settled: a release that holds several locks and was ended or renewed on one
 * of its rows is ended or renewed alike on the others, and its events name all its locks, once each.
 */
function settled(rows: Rows, outcome: Outcome, change: Change | null): Verdict {
  if (!change || change.events.length === 0) return { outcome, change: null };
  rows.put(change.next);
  for (const n of change.also ?? []) rows.set(n);
  const several = releasesOfSeveral(rows.stored);
  for (const r of several.values()) mirror(rows, r);
  const events = namedOnAll(change.events, several, change.release);
  const done: Change = { ...change, events, also: rows.changed() };
  return { outcome: outcome.ok ? { ...outcome, events, also: done.also } : outcome, change: done };
}

// The releases as stored that hold more than one lock, by id.
function releasesOfSeveral(stored: Stored): Map<number, Release> {
  const found = new Map<number, Release>();
  for (const e of stored.entries.values()) for (const r of e.releases) if (r.locks) found.set(r.id, r);
  return found;
}

// A release gone from one of its rows is gone from all; renewed on one (a new lease), renewed on all.
function mirror(rows: Rows, r: Release) {
  // Only the rows this decision read say anything: a row not read is not a row the release left.
  const read = (r.locks ?? []).filter((lock) => rows.get(lock) !== undefined);
  const copies = read.map((lock) => rows.get(lock)?.releases.find((x) => x.id === r.id));
  const ended = copies.some((c) => c === undefined);
  // Each SQL row parses its own copy of the release: a renewal is told by its lease, not by the object.
  const now = copies.find((c) => c !== undefined && c.expiresAt !== r.expiresAt);
  if (!ended && !now) return;
  for (const lock of read) {
    const e = rows.get(lock);
    if (!e) continue;
    const releases = ended
      ? e.releases.filter((x) => x.id !== r.id)
      : e.releases.map((x) => (x.id === r.id ? (now as Release) : x));
    rows.set({ lock, releases, block: e.block });
  }
}

// Events of a release on several locks name the first as `lock` and all as `locks`; each is told once.
function namedOnAll(events: Event[], several: Map<number, Release>, granted: Release | undefined): Event[] {
  const seen = new Set<string>();
  const out: Event[] = [];
  for (const e of events) {
    const r =
      e.releaseId === null
        ? undefined
        : (several.get(e.releaseId) ?? (granted?.id === e.releaseId ? granted : undefined));
    if (!r?.locks) {
      out.push(e);
      continue;
    }
    const key = `${e.kind} ${e.releaseId}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ ...e, lock: r.locks[0] as string, locks: r.locks });
  }
  return out;
}
