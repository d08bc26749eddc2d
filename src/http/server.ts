// The HTTP face of the locks: the original's four endpoints (answering 1 or 0)
// and the rest, as a table of routes. A lock's endpoints live under
// /locks/NAME/…; the original's paths act on the default lock (/block and
// /unblock on the root: "block all releases"). Handlers parse the request,
// call the engine once, and hand the outcome to answer.ts.

import type { Server } from "bun";
import { type Action, closed, forbidden, identify, reaches, type Token } from "../access.ts";
import { claimProblem, isPool, poolParent, reach } from "../claim.ts";
import { type Config, declaredChildren, lockAllowed, MAX_TTL_SECONDS } from "../config.ts";
import type { Engine, Room, Snapshot } from "../engine.ts";
import type { Log } from "../log.ts";
import { countStart, START_REFUSALS } from "../metrics.ts";
import { LOCK_NAME_RULE, validLockName } from "../names.ts";
import { looksLikeJwt } from "../oidc.ts";
import {
  type Actor,
  block,
  DEFAULT_LOCK,
  type Outcome,
  type Reason,
  type Refusal,
  ROOT,
  refuse,
  renew,
  type State,
  stillBlocked,
  stop,
  unblock,
} from "../release.ts";
import { identifyJob, type Job, jobUnder } from "../trust.ts";
import { visible } from "../visible.ts";
import { describeBlock, describeRelease, iso } from "../words.ts";
import { answer, SECURITY_HEADERS, type Success, text, wantsJson } from "./answer.ts";
import pageText from "./page.html" with { type: "text" };
import { type Ask, readsOf } from "./reads.ts";
import {
  bearer,
  hasTokenParam,
  Invalid,
  type Params,
  readParams,
  readQuery,
  sameSite,
  text as textParam,
  tokenInUrl,
  version as versionParam,
  whole,
} from "./request.ts";
import { type Board, keepStreamsAlive, viewsOf } from "./views.ts";

type Handler = (req: Request, server: Server<undefined>) => Response | Promise<Response>;
/** A route's handler, given the URL already read: Bun builds `req.url` anew on each access. */
type Route = (req: Request, server: Server<undefined>, url: string) => Response | Promise<Response>;
/** A change's request, with the token it came with (null when the daemon has no tokens). */
type ChangeAsk = Ask & { lock: string; token: Token | null };

const CHANGE_METHODS = ["GET", "POST"];
/** The check a route's table entry names, applied before its handler: see GUARDS in startServer. */
type GuardName = "open" | "reader" | "sender" | "copier";
type TableRoute = { methods: string[]; guard: GuardName; handle: Route };
const READ_METHODS = ["GET", "HEAD"];
const ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] as const;

/**
 * Serves one engine. `board` holds the page's words for the configuration's locks; whether the page must ask for
 * a token is said from cfg.access, which is read on every request: a reload (SIGHUP) replaces it.
 */
export function startServer(
  cfg: Config,
  log: Log,
  engine: Engine,
  board: Omit<Board, "tokenRequired">,
): Server<undefined> {
  const { backup, change, lockOf, lockOfRelease, onCommit, snapshot, snapshotAfter, start } = engine;
  const views = viewsOf(engine, { ...board, tokenRequired: () => closed(cfg.access) });
  const { broadcastChange, statusJson } = views;

  // A CI job's ID token ([[trust]]) is verified before its route runs, as checking a signature (and perhaps
  // fetching the issuer's keys) cannot be done on the spot; the route then finds its caller as for a named token.
  const jobs = new WeakMap<Request, Job>();
  const identifyingJobs =
    (handle: Route): Route =>
    (req, server, url) => {
      const trust = cfg.access.trust;
      const sent = trust.length > 0 ? bearer(req) : "";
      if (!looksLikeJwt(sent) || identify(cfg.access, sent)) return handle(req, server, url);
      return identifyJob(trust, sent).then((job) => {
        jobs.set(req, job);
        return handle(req, server, url);
      });
    };

  // Who sent the request: a named token, RS_TOKEN or a CI job (or why the job is refused); null when none.
  function callerOf(req: Request): Token | Refusal | null {
    const job = jobs.get(req);
    return job ? jobUnder(job, cfg.access.trust) : identify(cfg.access, bearer(req));
  }

  // Who may change anything: browsers only from this daemon's own page and a trusted host name; with
  // tokens, only a token whose rights and locks cover the change. The token comes back, to be recorded.
  function guard(req: Request, action: Action, lock: string): Refusal | Token | null {
    const token = authenticate(req);
    if (token === null || "ok" in token) return token;
    const why = forbidden(token, action, lock);
    return why === null ? token : refuse("forbidden", why);
  }

  // Who sends a change, whatever it is about: a browser from another site, or no valid token, is refused.
  function authenticate(req: Request): Refusal | Token | null {
    const crossSite = sameSite(req, cfg.hosts);
    if (crossSite) return crossSite;
    if (!closed(cfg.access)) return null;
    return callerOf(req) ?? UNAUTHORIZED;
  }

  // With read = "token" in the configuration file, reading needs a valid token too.
  const mayRead = (req: Request): Refusal | null => {
    if (cfg.access.read === "open") return null;
    const caller = callerOf(req);
    return caller === null ? UNAUTHORIZED : "ok" in caller ? caller : null;
  };

  // A caller refused before any lock name is looked at, so that one without a valid token learns
  // nothing, not even which locks exist (RS_LOCKS, or a new name beyond RS_MAX_LOCKS).
  const refusedBeforeName = (req: Request, methods: string[]): Refusal | null => {
    if (methods === READ_METHODS) return mayRead(req);
    const who = authenticate(req);
    return who !== null && "ok" in who ? who : null;
  };

  // A lock named in a path: valid, and allowed. Whether there is room for one more name is decided when a
  // change would store it (see roomFor).
  function admit(name: string): Refusal | null {
    if (isPool(name)) {
      const problem = claimProblem([name], childrenOf);
      return problem ? refuse("invalid", problem) : null; // its children are declared, so known
    }
    const invalid = validName(name);
    if (invalid) return invalid;
    if (!lockAllowed(cfg, name))
      return refuse("unknown-lock", `there is no lock ${name}: RS_LOCKS allows only ${cfg.locks?.join(", ")}`);
    return null;
  }

  // The declared children of a lock: what a pool of it (`devices/*`) may take.
  const childrenOf = (parent: string): string[] => declaredChildren(cfg, parent);

  // What a start claims: the lock of its path, and each lock= it repeats (on /start, those alone), checked
  // as a whole; a refusal when one of them is unknown or not the caller's to start.
  function claimOf(p: Params, ask: ChangeAsk, action: Action): string[] | Refusal {
    const asked = p.locks ?? [];
    const names = asked.length > 0 && pathOf(ask.url) === "/start" ? asked : [ask.lock, ...asked];
    const problem = claimProblem(names, childrenOf);
    if (problem) throw new Invalid(problem);
    for (const name of names) {
      const refused = admit(name);
      if (refused) return refused;
    }
    return allowedOn(names, ask.token, action) ?? names;
  }

  // A token must reach every lock a claim may hold (each child of its pools).
  const allowedOn = (claim: readonly string[], token: Token | null, action: Action): Refusal | null => {
    if (!token) return null;
    for (const lock of reach(claim, childrenOf)) {
      const why = forbidden(token, action, lock);
      if (why) return refuse("forbidden", why);
    }
    return null;
  };

  // How many lock names a change may find stored before it stores one more (none with RS_LOCKS, whose names
  // are fixed). A token limited to some locks may hold only its share of RS_MAX_LOCKS under them: so many
  // that all such tokens together leave a share for everyone else, and none can use up a lock outside its scope.
  function roomFor(token: Token | null): Room | undefined {
    if (cfg.locks) return undefined;
    if (!token || token.locks === "*") return { most: cfg.maxLocks, share: null };
    let limited = 0;
    for (const t of [...cfg.access.tokens.values(), ...cfg.access.trust]) if (t.locks !== "*") limited++;
    const most = Math.max(1, Math.floor(cfg.maxLocks / (limited + 1)));
    return { most: cfg.maxLocks, share: { who: token.who, locks: token.locks, most } };
  }

  // A state-changing endpoint: guard, parse, run, answer; a bad parameter is 400 invalid.
  const changing =
    (
      name: Action,
      act: (p: Params, ask: ChangeAsk) => Outcome | Promise<Outcome>,
      success: (o: Outcome, lock: string) => Success,
    ) =>
    (ask: Ask & { lock: string }): Response | Promise<Response> => {
      const { req, lock } = ask;
      // A start on /start with lock= in its query is on those locks, not the default lock (each is checked in claimOf).
      const guarded = name === "start" ? (askedOnStart(ask.url) ?? lock) : lock;
      const respond = (o: Outcome): Response | Promise<Response> => {
        if (!o.ok)
          log.refusal(
            o.reason,
            () => `refused ${name}${lock === DEFAULT_LOCK || lock === ROOT ? "" : ` on ${lock}`}: ${o.message}`,
          );
        // The lock's status goes with a JSON answer only to a caller who may read it.
        // Asked only for a JSON answer: a plain 1 or 0 costs no second look at the token.
        if (!ask.json || mayRead(req) !== null) return answer(ask.json, o, success(o, lock));
        const shown = shownAfter(o, guarded);
        const withStatus = (snap: Snapshot) => answer(true, o, success(o, lock), () => statusJson(shown, snap));
        // A change shows the state it left, as its transaction saw it; a refusal, a snapshot taken after it.
        if (o.ok) return withStatus(snapshotAfter(o.next));
        const snap = snapshot(shown);
        return snap instanceof Promise
          ? snap.then(withStatus, () => answer(true, o, success(o, lock)))
          : withStatus(snap);
      };
      const access = cfg.access;
      let token = guard(req, name, guarded);
      if (token !== null && "ok" in token) return respond(token);
      const run = (p: Params | Refusal): Response | Promise<Response> => {
        if (!(p instanceof Map)) return respond(p);
        if (hasTokenParam(p)) return respond(TOKEN_IN_URL);
        const unknown = unknownParameter(name, p);
        if (unknown) return respond(unknown);
        // A reload while the body came in may have revoked the token: it is looked up again.
        if (cfg.access !== access) {
          token = guard(req, name, guarded);
          if (token !== null && "ok" in token) return respond(token);
        }
        let outcome: Outcome | Promise<Outcome>;
        try {
          outcome = act(p, { ...ask, token: token as Token | null });
        } catch (e) {
          if (!(e instanceof Invalid)) throw e;
          return respond(refuse("invalid", e.message));
        }
        return outcome instanceof Promise ? outcome.then(respond) : respond(outcome);
      };
      const params = readParams(req, ask.url);
      return params instanceof Promise ? params.then(run) : run(params);
    };

  const id = (p: Params) => whole(p, "id", 1, Number.MAX_SAFE_INTEGER);
  // Who asks: the name sent (by default a named token's holder) and whose token it was.
  const holder = (p: Params, token: Token | null) => ({
    name: textParam(p, "name") || (token?.named ? token.who : ""),
    reason: textParam(p, "reason"),
    by: token?.who,
  });
  const actor = (p: Params, token: Token | null) => ({
    name: textParam(p, "name") || (token?.named ? token.who : ""),
    by: token?.who,
  });

  // A stop by id that gives no name is, in practice, the holder's own script ending its release (it was
  // given the id): credited to the holder, from the stored release, rather than to "an unknown user".
  const creditedTo = (who: Actor, s: State, release: number | null): Actor =>
    who.name || release === null ? who : { ...who, name: s.releases.find((r) => r.id === release)?.name ?? "" };

  // The original's /stop and /renew with an id act on the release wherever it is (rule 3 of the lock model):
  // on the lock that holds it, when that is not the original's (found by another replica a moment ago too).
  const onRelease = (
    lock: string,
    release: number | null,
    act: (lock: string) => Outcome | Promise<Outcome>,
  ): Outcome | Promise<Outcome> => {
    if (release === null || lock !== DEFAULT_LOCK) return act(lock);
    const held = lockOf(release);
    return held !== null ? act(held) : lockOfRelease(release).then((found) => act(found ?? lock));
  };

  // Stopping or renewing a release acts on every lock it holds: the token must cover each of them, not only the
  // one the path names (a token for staging must not end or extend a release that also holds prod).
  function notAllOf(token: Token | null, action: Action, s: State, release: number | null): Refusal | null {
    if (token === null) return null;
    const r = release === null ? s.release : s.releases.find((held) => held.id === release);
    for (const lock of r?.locks ?? [s.lock]) {
      const why = forbidden(token, action, lock);
      if (why) return refuse("forbidden", why);
    }
    return null;
  }

  /** Every action on a lock; the table below says where each is reached. */
  const actions = {
    start: changing(
      "start",
      (p, ask) => {
        const { req, server, token } = ask;
        const ttlSeconds = whole(p, "ttl", 1, MAX_TTL_SECONDS) ?? cfg.ttlSeconds;
        const wait = whole(p, "wait", 0, cfg.maxWaitSeconds) ?? 0;
        const override = p.has("override") ? textParam(p, "override") : undefined;
        if (override === "")
          throw new Invalid("override is empty: say why this release may start during a freeze, e.g. override=hotfix");
        const version = versionParam(p);
        const urgent = p.has("urgent") ? textParam(p, "urgent") : undefined;
        if (urgent === "")
          throw new Invalid(
            "urgent is empty: say why this release goes ahead of the line, e.g. urgent=hotfix for INC-42",
          );
        const claim = claimOf(p, ask, "start");
        if (!Array.isArray(claim)) return claim;
        // Overriding a freeze is its own right: asking for it without the right is refused, frozen or not.
        const notAllowed =
          (override !== undefined ? allowedOn(claim, token, "override") : null) ??
          (urgent !== undefined ? allowedOn(claim, token, "urgent") : null);
        if (notAllowed) return notAllowed;
        if (wait > 0) server.timeout(req, 0); // a waiter may sit quietly for up to RS_MAX_WAIT
        // A waiter is handed the release only while its token still may start it (a reload may revoke it).
        const access = cfg.access;
        const stillAllowed = () => {
          if (cfg.access === access) return null;
          const again = guard(req, override === undefined ? "start" : "override", claim[0] as string);
          if (again !== null && "ok" in again) return again;
          const still = allowedOn(claim, again, override === undefined ? "start" : "override");
          return still ?? (urgent !== undefined ? allowedOn(claim, again, "urgent") : null);
        };
        return start(
          claim,
          {
            ...holder(p, token),
            ttlSeconds,
            override,
            ...(version === undefined ? {} : { version }),
            ...(urgent === undefined ? {} : { urgent }),
          },
          wait,
          req.signal,
          stillAllowed,
          roomFor(token),
        );
      },
      (o, lock) =>
        o.ok && o.release
          ? {
              message: describeRelease(o.release, o.locks?.[0] ?? lock),
              releaseId: o.release.id,
              locks: o.locks ?? [lock],
            }
          : { message: "" },
    ),
    stop: changing(
      "stop",
      (p, { lock, token }) => {
        const release = id(p);
        const who = actor(p, token);
        return onRelease(lock, release, (on) =>
          change(
            on,
            (s, now) => notAllOf(token, "stop", s, release) ?? stop(s, release, creditedTo(who, s, release), now),
          ),
        );
      },
      () => ({ message: "the release is over" }),
    ),
    renew: changing(
      "renew",
      (p, { lock, token }) => {
        const release = id(p);
        if (release === null)
          throw new Invalid("id is required: pass the release id from X-Release-Id, e.g. /renew?id=42");
        const ttl = whole(p, "ttl", 1, MAX_TTL_SECONDS) ?? cfg.ttlSeconds;
        if (ttl === null)
          throw new Invalid(
            `ttl is required (the daemon has no RS_TTL): a whole number of seconds from 1 to ${MAX_TTL_SECONDS}`,
          );
        return onRelease(lock, release, (on) =>
          change(on, (s, now) => notAllOf(token, "renew", s, release) ?? renew(s, release, ttl, now, token?.who)),
        );
      },
      (o) => ({
        message: o.ok && o.release?.expiresAt ? `the lease now ends at ${iso(o.release.expiresAt)}` : "",
      }),
    ),
    block: changing(
      "block",
      (p, { lock, token }) => {
        const who = holder(p, token);
        return change(lock, (s, now) => block(s, who, now), roomFor(token));
      },
      (o, lock) => ({ message: o.ok && o.next.block ? describeBlock(o.next.block, lock) : "" }),
    ),
    unblock: changing(
      "unblock",
      (p, { lock, token }) => {
        const who = actor(p, token);
        return change(lock, (s, now) => unblock(s, who, now));
      },
      (o) => ({ message: (o.ok && stillBlocked(o.next)) || "releasing is open again" }),
    ),
  };

  // What the token a request sent may do on a lock, so that the page offers only the buttons that can work;
  // `unblockAbove`: lift the block from above (`on`: the root "", or a lock above) that stops this one.
  // Undefined without a valid token (or without tokens): then the page offers every button, and asks for a
  // token when a change needs one.
  function mayOn(req: Request, lock: string, on: string | undefined) {
    const token = closed(cfg.access) ? callerOf(req) : null; // a named token, RS_TOKEN or a CI job's
    if (!token || "ok" in token) return undefined;
    const may = (action: Action, where = lock) => forbidden(token, action, where) === null;
    return {
      start: may("start"),
      stop: may("stop"),
      block: may("block"),
      unblock: may("unblock"),
      override: may("override"),
      unblockAbove: on !== undefined && may("unblock", on),
    };
  }

  const reads = readsOf(cfg, mayOn, engine, views);

  // The table: each path, the methods it answers, and what it does.
  const lockRoutes: Record<
    string,
    { methods: string[]; run: (ask: Ask & { lock: string }) => Response | Promise<Response> }
  > = {
    start: { methods: CHANGE_METHODS, run: actions.start },
    stop: { methods: CHANGE_METHODS, run: actions.stop },
    renew: { methods: CHANGE_METHODS, run: actions.renew },
    block: { methods: CHANGE_METHODS, run: actions.block },
    unblock: { methods: CHANGE_METHODS, run: actions.unblock },
    status: { methods: READ_METHODS, run: reads.status },
    history: { methods: READ_METHODS, run: reads.history },
    events: { methods: READ_METHODS, run: reads.events },
  };
  const on = (action: string, lock: string | undefined): TableRoute => {
    const route = lockRoutes[action] as (typeof lockRoutes)[string];
    const run = route.run as (a: Ask) => Response | Promise<Response>;
    return {
      methods: route.methods,
      guard: route.methods === READ_METHODS ? "reader" : "sender",
      handle: (req: Request, server: Server<undefined>, url: string) => {
        const asJson = wantsJson(url, req);
        // With RS_LOCKS, the original's paths exist only if the default lock is one of them (a /start that
        // names its locks with lock= is on those, each checked as the claim is read).
        const onDefault = lock === DEFAULT_LOCK && !(action === "start" && askedOnStart(url) !== null);
        if (onDefault && cfg.locks && !cfg.locks.includes(DEFAULT_LOCK))
          return answer(
            asJson,
            refuse("unknown-lock", `there is no lock default: RS_LOCKS allows only ${cfg.locks.join(", ")}`),
          );
        return run({ req, server, url, lock, json: asJson });
      },
    };
  };
  // Who may reach a route, checked by the table before its handler runs (see `guarded` below); the changes of a
  // lock are then checked against the token's rights and locks (`guard`), and /locks/NAME/… checks its path first.
  const GUARDS: Record<GuardName, (req: Request) => Refusal | null> = {
    open: () => null,
    reader: mayRead, // with read = "token", a valid token
    sender: (req) => refusedBeforeName(req, CHANGE_METHODS), // same site, and a valid token when there are tokens
    copier: mayTakeCopy, // a token that reaches every lock
  };
  const guarded =
    (route: TableRoute): Route =>
    (req, server, url) => {
      const refused = GUARDS[route.guard](req);
      return refused ? answer(wantsJson(url, req), refused) : route.handle(req, server, url);
    };
  const table: Record<string, TableRoute> = {
    "/": { methods: READ_METHODS, guard: "open", handle: () => page() },
    "/start": on("start", DEFAULT_LOCK),
    "/stop": on("stop", DEFAULT_LOCK),
    "/renew": on("renew", DEFAULT_LOCK),
    "/block": on("block", ROOT),
    "/unblock": on("unblock", ROOT),
    "/status": on("status", DEFAULT_LOCK),
    "/history": on("history", undefined),
    "/events": on("events", undefined),
    "/locks": { methods: READ_METHODS, guard: "reader", handle: (req) => reads.locks(req) },
    // Guarded in lockPath, once the path and the method are known to be right (see there).
    "/locks/*": { methods: [...ALL_METHODS], guard: "open", handle: (req, server, url) => lockPath(req, server, url) },
    "/healthz": { methods: READ_METHODS, guard: "open", handle: () => reads.healthz() },
    "/metrics": { methods: READ_METHODS, guard: "reader", handle: () => reads.metrics() },
    "/backup": { methods: READ_METHODS, guard: "copier", handle: (req) => copyOfDatabase(req) },
    "/freezes": { methods: READ_METHODS, guard: "reader", handle: (req) => reads.freezes(req) },
    "/webhooks": { methods: READ_METHODS, guard: "reader", handle: (req) => reads.webhooks(req) },
  };

  // /locks/NAME/ACTION, or /locks/NAME/ for the page of one lock.
  function lockPath(req: Request, server: Server<undefined>, url: string): Response | Promise<Response> {
    const asJson = wantsJson(url, req);
    const path = pathOf(url);
    // Bun routes by the path as sent but hands over a normalized URL: one that left /locks/ had dot segments.
    if (!path.startsWith("/locks/")) return notFound(path, asJson);
    const rest = path.slice("/locks/".length);
    const cut = rest.lastIndexOf("/");
    if (cut < 0)
      return notFound(
        path,
        asJson,
        `${path.slice(0, 120)} names no action: use /locks/NAME/ACTION, e.g. /locks/prod/start`,
      );
    const name = rest.slice(0, cut);
    const action = rest.slice(cut + 1);
    const route = Object.hasOwn(lockRoutes, action) ? lockRoutes[action] : undefined;
    // What the path and method say is answered first, the same for every name; the name is looked at last.
    if (action === "") return lockPage(req, path, name, asJson);
    if (!route)
      return notFound(
        path,
        asJson,
        `there is no action ${action.slice(0, 40)} on a lock: use start, stop, renew, block, unblock, status, history or events`,
      );
    if (!allows(route.methods, req.method)) return notAllowed(req, path, route.methods);
    const refused = refusedBeforeName(req, route.methods) ?? admit(name) ?? poolOnlyStarts(name, action);
    if (refused) return answer(asJson, refused);
    return route.run({ req, server, url, lock: name, json: asJson });
  }

  // /locks/NAME/: the page, for any lock name to a caller who may not read (it learns nothing from it).
  function lockPage(req: Request, path: string, name: string, asJson: boolean): Response {
    // /locks/prod/start/ is a mistyped action, not the page of a lock named prod/start.
    const last = name.slice(name.lastIndexOf("/") + 1);
    if (Object.hasOwn(lockRoutes, last))
      return notFound(
        path,
        asJson,
        `${path.slice(0, 120)} is no page: the action ${last} is ${path.slice(0, -1).slice(0, 120)}, without the trailing slash`,
      );
    if (req.method !== "GET" && req.method !== "HEAD") return notAllowed(req, path, READ_METHODS);
    const refused = mayRead(req) === null ? admit(name) : validName(name);
    return refused ? answer(asJson, refused) : page();
  }

  // Every answer to a start is counted here, whatever gave it (the token, the lock's name, a parameter, the
  // rules), on the lock the path names: the refusals that never reach a lock's rules are the ones an alert needs.
  const countingStarts =
    (handle: Handler): Handler =>
    (req, server) => {
      // /start?lock=A&lock=B asks for A (and B), not for the default lock: counted on the first it names.
      const lock = (req.url.includes("lock=") ? askedOnStart(req.url) : null) ?? startedLock(req.url);
      const res = handle(req, server);
      if (lock === null) return res;
      return res instanceof Promise ? res.then((r) => counted(lock, r)) : counted(lock, res);
    };
  const counted = (lock: string, res: Response): Response => {
    const reason = res.headers.get("X-Reason-Code") as Reason | null;
    // A grant counts on each lock it holds (a pool's child, every lock of a claim), not on the name in the path.
    if (reason === null && res.headers.has("X-Release-Id"))
      for (const held of (res.headers.get("X-Lock") ?? lock).split(",")) countStart(held, null, cfg, engine);
    else if (reason !== null && START_REFUSALS.includes(reason)) countStart(lock, reason, cfg, engine);
    return res;
  };

  // A consistent copy of the database, taken inside the daemon: the file is locked against sqlite3 from outside.
  function copyOfDatabase(req: Request): Response {
    const asJson = wantsJson(req.url, req);
    const copy = backup();
    if (!copy)
      return answer(
        asJson,
        refuse(
          "not-found",
          "this store has no copy to give: RS_DB=:memory: keeps nothing, and PostgreSQL is backed up with pg_dump",
        ),
      );
    return new Response(copy as Uint8Array<ArrayBuffer>, {
      headers: {
        ...SECURITY_HEADERS,
        "Content-Type": "application/vnd.sqlite3",
        "Content-Disposition": 'attachment; filename="releasestatus.db"',
      },
    });
  }

  // The copy holds every lock and all history: with tokens, only one whose locks are "*" may take it.
  function mayTakeCopy(req: Request): Refusal | null {
    const crossSite = sameSite(req, cfg.hosts);
    if (crossSite) return crossSite;
    if (!closed(cfg.access)) return null;
    const token = callerOf(req);
    if (!token) return UNAUTHORIZED;
    if ("ok" in token) return token;
    if (reaches(token, ROOT)) return null;
    return refuse(
      "forbidden",
      `${token.who} may not take a copy of the database: that needs a token with locks = ["*"]`,
    );
  }

  function notAllowed(req: Request, path: string, methods: string[]): Response {
    const allow = methods.join(", ");
    const res = answer(
      wantsJson(req.url, req),
      refuse("method-not-allowed", `${req.method} is not allowed on ${path}; use ${allow}`),
    );
    res.headers.set("Allow", allow);
    return res;
  }

  // Bun's routes: every method of every path is answered here, so what falls through is a path we do not have.
  const routes: Record<string, Partial<Record<(typeof ALL_METHODS)[number], Handler>>> = {};
  for (const [path, route] of Object.entries(table)) {
    routes[path] = {};
    for (const method of ALL_METHODS)
      (routes[path] as Record<string, Handler>)[method] = countingStarts(
        refuseTokenInUrl(
          allows(route.methods, method)
            ? identifyingJobs(guarded(route))
            : (req) => notAllowed(req, path, route.methods),
        ),
      );
  }

  // What Bun's routes do not take: a path we do not have, or a method not in ALL_METHODS (TRACE, CONNECT),
  // which on a path we have is 405 like any other method it does not take.
  function otherMethods(req: Request, server: Server<undefined>): Response | Promise<Response> {
    const url = req.url;
    const path = pathOrNull(url);
    if (path === null) return notFound(url, wantsJson(url, req)); // CONNECT host:port, say
    // A method the routes take came here by a path they do not have, though its URL, normalized by Bun, may
    // look like one (/./start, /a/../locks/prod/start): it reaches nothing.
    if ((ALL_METHODS as readonly string[]).includes(req.method)) return notFound(path, wantsJson(url, req));
    // Any other method is allowed nowhere: lockPath answers it as it answers PUT (405), after its own checks.
    if (path.startsWith("/locks/")) return refuseTokenInUrl(lockPath)(req, server);
    const route = Object.hasOwn(table, path) ? table[path] : undefined;
    if (!route) return notFound(path, wantsJson(url, req));
    return refuseTokenInUrl((req) => notAllowed(req, path, route.methods))(req, server);
  }

  onCommit(({ events }) => broadcastChange(events));
  setInterval(keepStreamsAlive, 15_000).unref();

  return Bun.serve({
    port: cfg.port,
    hostname: cfg.host,
    reusePort: false, // a second daemon on this port must fail, not share it
    development: false,
    maxRequestBodySize: 64 * 1024,
    routes,
    fetch: otherMethods,
    error(e) {
      log.error(`internal error while answering a request: ${e.message}`);
      return text("0\n", 500);
    },
  });
}

// The parameters each change takes. Any other is refused, never ignored: /stop?idd=1 would end whatever runs,
// and /block?lock=prod would block every lock.
const PARAMETERS: Record<string, readonly string[]> = {
  start: ["name", "reason", "ttl", "wait", "override", "lock", "version", "urgent", "format"],
  stop: ["id", "name", "format"],
  renew: ["id", "ttl", "format"],
  block: ["name", "reason", "format"],
  unblock: ["name", "format"],
};
function unknownParameter(action: string, p: Params): Refusal | null {
  const known = PARAMETERS[action] ?? [];
  const unknown = [...p.keys()].find((k) => !known.includes(k));
  if (unknown === undefined) return null;
  return refuse(
    "invalid",
    `${visible(unknown.slice(0, 40))} is not a parameter of ${action}: it takes ${known.join(", ")}`,
  );
}

const allows = (methods: string[], method: string) => methods.includes(method);

// The lock whose status goes with a JSON answer: a grant's first lock (a pool's child); for a refused start, the
// first lock it asked for (a pool: the lock it takes from); the root's answers show the default lock, as before.
function shownAfter(o: Outcome, asked: string): string {
  if (asked === ROOT) return DEFAULT_LOCK;
  if (o.ok && o.locks) return o.locks[0] as string;
  return isPool(asked) ? poolParent(asked) : asked;
}

// A pool names no one lock: only a start takes from it; anything else acts on the lock the start took.
const poolOnlyStarts = (name: string, action: string): Refusal | null =>
  isPool(name) && action !== "start"
    ? refuse(
        "invalid",
        `${name} is a pool: only start takes from it; ${action} the lock the start took (its X-Lock), e.g. /locks/${poolParent(name)}/NAME/${action}`,
      )
    : null;

/** The first lock= of a start on /start, which takes the place of the default lock; null when there is none. */
function askedOnStart(url: string): string | null {
  if (pathOrNull(url) !== "/start") return null;
  const p = readQuery(url);
  return p instanceof Map ? (p.locks?.[0] ?? null) : null;
}

/** The lock a start's path asks for (/start: the default lock), or null for any other path. */
function startedLock(url: string): string | null {
  const path = pathOrNull(url);
  if (path === "/start") return DEFAULT_LOCK;
  return path?.startsWith("/locks/") && path.endsWith("/start") ? path.slice("/locks/".length, -"/start".length) : null;
}

const validName = (name: string): Refusal | null =>
  validLockName(name)
    ? null
    : refuse("invalid", `${JSON.stringify(name.slice(0, 120))} is not a lock name: ${LOCK_NAME_RULE}`);

const UNAUTHORIZED = refuse(
  "unauthorized",
  "a valid token is required: send the header 'Authorization: Bearer <token>'",
);
const TOKEN_IN_URL = refuse(
  "invalid",
  "a token does not belong in the URL, where proxies and logs keep it: send it in the Authorization header ('Authorization: Bearer <token>'), and make a new one if this one was real",
);

// Every path refuses a token sent as a parameter, before anything else: it must not look accepted.
const refuseTokenInUrl =
  (handle: Route): Handler =>
  (req, server) => {
    const url = req.url; // read once: Bun builds this string anew on each access
    return tokenInUrl(url) ? answer(wantsJson(url, req), TOKEN_IN_URL) : handle(req, server, url);
  };

// The path of a request's URL. One made only of lock-name characters is cut out of the string: for
// such a path the URL parser would change nothing (no escapes, no dot segments), and it costs more.
const PLAIN_PATH = /^[a-z]+:\/\/[^/?#]*((?:\/[a-z0-9][a-z0-9._-]*)+\/?)(?:\?|$)/;
const pathOf = (url: string): string => PLAIN_PATH.exec(url)?.[1] ?? new URL(url).pathname;
const pathOrNull = (url: string): string | null => {
  try {
    return pathOf(url);
  } catch {
    return null; // no URL at all
  }
};

const notFound = (
  path: string,
  asJson: boolean,
  message = `there is no ${path.slice(0, 200)}; see docs/endpoints.md for the endpoints`,
) => answer(asJson, refuse("not-found", message));

// bun-types declares .html imports as HTML bundles; with type "text" Bun embeds the file as a string.
const pageHtml = pageText as unknown as string;
const page = () =>
  new Response(pageHtml, {
    headers: { ...SECURITY_HEADERS, ...pageSecurityHeaders(), "Content-Type": "text/html; charset=utf-8" },
  });

// The page's inline script and style are allowed by their hashes, and nothing else is.
// Worked out on the first visit, not at start-up.
const inlineHash = (tag: string) => {
  const body = pageHtml.slice(pageHtml.indexOf(`<${tag}>`) + tag.length + 2, pageHtml.indexOf(`</${tag}>`));
  return `'sha256-${new Bun.CryptoHasher("sha256").update(body).digest("base64")}'`;
};
let pageHeaders: Record<string, string> | null = null;
const pageSecurityHeaders = () =>
  (pageHeaders ??= {
    "Content-Security-Policy": [
      "default-src 'none'",
      `script-src ${inlineHash("script")}`,
      `style-src ${inlineHash("style")}`,
      "connect-src 'self'",
      "img-src 'self' data:",
      "base-uri 'none'",
      "form-action 'none'",
      "frame-ancestors 'none'",
    ].join("; "),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
  });

export { closeEventStreams } from "./views.ts";
