// The read endpoints: a lock's status, history and live events, /locks, /freezes, /webhooks, /healthz and
// /metrics. Each renders from one snapshot of the state (or says it is unknown), and changes nothing; who may
// read is decided by the route table (server.ts) before any of these is called.
import type { Server } from "bun";
import type { Window } from "../calendar.ts";
import type { Config } from "../config.ts";
import type { Engine, Snapshot } from "../engine.ts";
import { boundaryRecorded, describeSchedule, freezeWindows, upcoming } from "../freezes.ts";
import { renderMetrics } from "../metrics.ts";
import { webhookStatuses } from "../notify/deliver.ts";
import { DEFAULT_LOCK, type Event, ROOT, refuse } from "../release.ts";
import { describeEvent, iso } from "../words.ts";
import { answer, json, SECURITY_HEADERS, text, wantsJson } from "./answer.ts";
import { readQuery, whole } from "./request.ts";
import { eventJson, openStreams, type Views } from "./views.ts";

/**
 * What the token a request sent may do on a lock (server.ts knows who sent it), so that the page offers only the
 * buttons that can work; undefined without a valid token, when the page offers every button.
 */
export type MayOn = (req: Request, lock: string, blockOn: string | undefined) => Record<string, boolean> | undefined;

/** What a request is about: the lock (undefined: every lock), and how it wants its answer. */
export type Ask = { req: Request; server: Server<undefined>; url: string; lock: string | undefined; json: boolean };

/**
 * The read handlers, over the configuration (read at each request: a reload replaces parts of it), of one
 * engine, rendered by its views.
 */
export function readsOf(cfg: Config, mayOn: MayOn, engine: Engine, views: Views) {
  const { health, history, snapshot } = engine;
  const { eventStream, lockNames, locksText, statusJson, statusText } = views;

  function listLocks(req: Request): Response | Promise<Response> {
    const asJson = wantsJson(req.url, req);
    return fromSnapshot(
      ROOT,
      (snap) => (asJson ? json(lockNames(snap).map((l) => statusJson(l, snap))) : text(locksText(snap))),
      asJson,
    );
  }

  // Every window of the freeze calendar, with its next three occurrences in UTC and on its own clock.
  function listFreezes(req: Request): Response {
    const list = freezeListing(Date.now());
    if (wantsJson(req.url, req)) return json({ freezes: list });
    if (list.length === 0)
      return text("no freeze windows: the calendar is empty (see [[freeze]] in docs/freezes.md)\n");
    return text(
      list
        .map(
          (f) =>
            `${f.reason} (${typeof f.locks === "string" ? "every lock" : f.locks.join(", ")}): ${f.schedule}${f.inForce ? ", in force now" : ""}\n${f.next.map((o) => `  ${o.fromLocal} - ${o.untilLocal}  (UTC ${o.from} - ${o.until})\n`).join("")}`,
        )
        .join(""),
    );
  }

  // Each webhook by its host only (a Slack URL's path is a secret), and how its deliveries go.
  function listWebhooks(req: Request): Response {
    const list = webhookStatuses().map((w) => ({
      webhook: w.label,
      format: w.format,
      disabled: w.disabled,
      lastSuccess: w.lastSuccess && { at: iso(w.lastSuccess.at), status: w.lastSuccess.status },
      lastFailure: w.lastFailure && {
        at: iso(w.lastFailure.at),
        status: w.lastFailure.status,
        error: w.lastFailure.error,
      },
      backlog: w.backlog,
      dropped: w.dropped,
      deliveries: w.deliveries,
    }));
    if (wantsJson(req.url, req)) return json({ webhooks: list });
    if (list.length === 0)
      return text("no webhooks: list them as [[webhook]] in the RS_CONFIG file (see docs/notifications.md)\n");
    return text(
      list
        .map((w) =>
          [
            `${w.webhook} (${w.format})${w.disabled ? `: disabled: ${w.disabled}` : ""}`,
            `  delivered ${w.deliveries.delivered}, failed attempts ${w.deliveries.failed}, dropped ${w.dropped}; ${w.backlog} events behind`,
            `  last success: ${w.lastSuccess ? `${w.lastSuccess.at} (${w.lastSuccess.status})` : "none yet"}`,
            `  last failure: ${w.lastFailure ? `${w.lastFailure.at} (${w.lastFailure.status ?? "no answer"}: ${w.lastFailure.error})` : "none"}`,
          ].join("\n"),
        )
        .join("\n")
        .concat("\n"),
    );
  }

  function healthz(): Response {
    const h = health();
    if (engine.closing) return text("shutting down\n", 503);
    if (h.ok) return text("ok\n");
    return text(`storage failing: ${h.problem ?? "the release state cannot be saved"}; see the daemon's log\n`, 503);
  }

  const metricsText = (snap: Snapshot | null) =>
    text(renderMetrics(health().ok, snap, cfg, engine), 200, "text/plain; version=0.0.4; charset=utf-8");
  // While the state cannot be read, the daemon's own metrics still say so (storage_healthy 0), without the locks'.
  const metrics = (): Response | Promise<Response> => {
    const snap = snapshot(ROOT);
    if (!(snap instanceof Promise)) return metricsText(snap);
    return snap.then(
      (s) => metricsText(health().known ? s : null),
      () => metricsText(null),
    );
  };

  /**
   * Renders from one snapshot of the state around `lock` (ROOT: every lock) taken after the request arrived
   * (with replicas, one read from the database), or says the state is unknown when it cannot be read.
   */
  function fromSnapshot(
    lock: string,
    render: (snap: Snapshot) => Response,
    asJson: boolean,
  ): Response | Promise<Response> {
    const snap = snapshot(lock);
    if (!(snap instanceof Promise)) return render(snap);
    return snap.then(
      (s) => (health().known ? render(s) : unknown(asJson)),
      () => unknown(asJson),
    );
  }

  return {
    status: ({ req, lock = DEFAULT_LOCK, json: asJson }: Ask) =>
      fromSnapshot(
        lock,
        (snap) => {
          if (!asJson) return text(statusText(lock, snap));
          const status = statusJson(lock, snap);
          const may = mayOn(req, lock, status.block ? status.block.on : undefined);
          return json(may ? { ...status, may } : status);
        },
        asJson,
      ),
    history: ({ url, lock, json: asJson }: Ask): Response | Promise<Response> => {
      const p = readQuery(url);
      if (!(p instanceof Map)) return answer(asJson, p);
      let limit: number;
      try {
        limit = whole(p, "limit", 1, 1000) ?? 50;
      } catch (e) {
        return answer(asJson, refuse("invalid", (e as Error).message));
      }
      if (!health().known) return unknown(asJson);
      return history(limit, lock).then(
        (events: Event[]) => {
          if (asJson) return json({ events: events.map(eventJson) });
          return text(events.map((e) => `${iso(e.at)}  ${e.kind.padEnd(10)}  ${describeEvent(e)}\n`).join(""));
        },
        () => unknown(asJson),
      );
    },
    events: ({ req, server, lock, json: asJson }: Ask): Response => {
      const headers = {
        ...SECURITY_HEADERS,
        "Content-Type": "text/event-stream; charset=utf-8",
        "X-Accel-Buffering": "no",
      };
      // HEAD has no body to send: a stream opened for it would never be read, and never be let go.
      if (req.method === "HEAD") return new Response(null, { headers });
      // Each stream holds a connection and up to MAX_UNSENT_BYTES: their number is bounded too.
      if (openStreams() >= cfg.maxStreams)
        return answer(
          asJson,
          refuse(
            "too-many-streams",
            `${cfg.maxStreams} event streams are open, as many as RS_MAX_STREAMS allows: try again later (a page reconnects by itself), or raise RS_MAX_STREAMS`,
          ),
        );
      server.timeout(req, 0); // a stream is quiet between changes; Bun would cut it after 10 s
      return new Response(eventStream(lock), { headers });
    },
    locks: listLocks,
    freezes: listFreezes,
    webhooks: listWebhooks,
    healthz,
    metrics,
  };
}

// With thousands of windows /freezes costs a tenth of a second of the event loop: one listing serves every read
// for a second, and never past the next boundary (what is in force changes then) nor a reload (new windows).
type FreezeListing = ReturnType<typeof listFreezesNow>;
let listing: { windows: readonly Window[]; listing: FreezeListing } | null = null;
function freezeListing(now: number): FreezeListing["list"] {
  const windows = freezeWindows();
  if (!listing || listing.windows !== windows || now >= listing.listing.until)
    listing = { windows, listing: listFreezesNow(windows, now) };
  return listing.listing.list;
}

function listFreezesNow(windows: readonly Window[], now: number) {
  const found = upcoming(windows, now, 3);
  const boundaries = found.flatMap(({ occurrences }) => occurrences.map((o) => (o.from > now ? o.from : o.until)));
  const list = found.map(({ window: w, occurrences }) => ({
    reason: w.reason,
    locks: w.locks ?? "*",
    timezone: w.timezone,
    schedule: describeSchedule(w),
    inForce: occurrences.some((o) => o.from <= now),
    recorded: boundaryRecorded(w, now), // its latest start or end is in the history
    next: occurrences.map((o) => ({
      from: iso(o.from),
      until: iso(o.until),
      fromLocal: o.fromLocal,
      untilLocal: o.untilLocal,
    })),
  }));
  return { list, until: Math.min(now + 1000, ...boundaries) };
}

// While the store cannot be read, the state is unknown: say so rather than show a stale one as current.
const UNKNOWN = "the release state cannot be read, so it is unknown; see the daemon's log";
export function unknown(asJson: boolean): Response {
  const res = asJson
    ? json({ ok: false, reason: "storage", known: false, message: UNKNOWN }, 503)
    : text(`unknown: ${UNKNOWN}\n`, 503);
  res.headers.set("X-Reason-Code", "storage");
  res.headers.set("X-Reason", UNKNOWN);
  return res;
}
