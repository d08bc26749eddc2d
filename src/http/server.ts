// The HTTP face of the lock: the original's four endpoints (answering 1 or 0),
// plus /renew, /status, /history and /healthz. Handlers parse and check the
// request, call one transition, and format its outcome; the rules live elsewhere.
import type { Server } from "bun";
import { type Config, MAX_TTL_SECONDS } from "../config.ts";
import {
  engine,
  freshen,
  health,
  history,
  isHealthy,
  onCommit,
  ROOT,
  startOrWait,
  state,
  storeDescription,
  transact,
  waitingList,
} from "../engine.ts";
import type { Log } from "../log.ts";
import { countStart, estimate, renderMetrics } from "../metrics.ts";
import {
  block,
  blockOn,
  describeBlock,
  describeEvent,
  describeRelease,
  type Event,
  iso,
  type Outcome,
  type Reason,
  type Refusal,
  refuse,
  renew,
  stop,
  UNKNOWN_USER,
  unblock,
} from "../release.ts";
import pageText from "./page.html" with { type: "text" };
import {
  Invalid,
  type Params,
  readParams,
  readQuery,
  sameBytes,
  sameOrigin,
  sha256,
  text,
  wantsJson,
  whole,
} from "./request.ts";

const HTTP_STATUS: Record<Reason, number> = {
  running: 200,
  blocked: 200,
  queued: 200,
  "not-running": 200,
  "not-blocked": 200,
  "wrong-id": 200,
  timeout: 200,
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  "not-found": 404,
  "method-not-allowed": 405,
  "too-large": 414,
  storage: 503,
  "shutting-down": 503,
};

const PLAIN = "text/plain; charset=utf-8";
const SECURITY_HEADERS = { "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store" };

/** What a successful change tells the caller beyond its 1. */
type Success = { message: string; releaseId?: number };
type Handler = (req: Request, server: Server<undefined>) => Response | Promise<Response>;

export function startServer(cfg: Config, log: Log): Server<undefined> {
  const tokenDigest = cfg.token === null ? null : sha256(cfg.token);
  tokenRequired = tokenDigest !== null;

  // Refuses state changes sent cross-site by a browser, and, when a token is set, without it.
  function guard(req: Request): Refusal | null {
    const site = req.headers.get("sec-fetch-site");
    const origin = req.headers.get("origin");
    if ((site && site !== "same-origin" && site !== "none") || (origin && !sameOrigin(origin, req)))
      return refuse("forbidden", "state changes are not accepted from other web sites");
    if (tokenDigest === null) return null;
    const auth = req.headers.get("authorization") ?? "";
    const given = auth.startsWith("Bearer ") ? auth.slice(7) : "";
    if (!sameBytes(sha256(given), tokenDigest))
      return refuse("unauthorized", "a valid token is required: send the header 'Authorization: Bearer <token>'");
    return null;
  }

  // Wraps a state-changing endpoint: guard, parse, run, answer; a bad parameter is 400 invalid.
  const mutation =
    (
      name: string,
      act: (p: Params, req: Request, server: Server<undefined>) => Outcome | Promise<Outcome>,
      describe: (o: Outcome) => Success,
    ): Handler =>
    (req, server) => {
      // Bun answers HEAD with the GET handler; a HEAD must never change state.
      if (req.method === "HEAD") return notAllowed(req, new URL(req.url).pathname as keyof typeof routes);
      const url = req.url; // Bun builds this string anew on each access
      const json = wantsJson(url, req);
      const respond = (o: Outcome) => {
        if (name === "start") countStart(o);
        if (!o.ok) log.refusal(o.reason, () => `refused ${name}: ${o.message}`);
        return answer(json, o, describe(o));
      };
      const denied = guard(req);
      if (denied) return respond(denied);
      const run = (p: Params | Refusal): Response | Promise<Response> => {
        if (p instanceof Map === false) return respond(p);
        let outcome: Outcome | Promise<Outcome>;
        try {
          outcome = act(p, req, server);
        } catch (e) {
          if (!(e instanceof Invalid)) throw e;
          return respond(refuse("invalid", e.message));
        }
        return outcome instanceof Promise ? outcome.then(respond) : respond(outcome);
      };
      const params = readParams(req, url);
      return params instanceof Promise ? params.then(run) : run(params);
    };

  const handleStart = mutation(
    "start",
    (p, req, server) => {
      const holder = { name: text(p, "name"), reason: text(p, "reason") };
      const ttlSeconds = whole(p, "ttl", 1, MAX_TTL_SECONDS) ?? cfg.ttlSeconds;
      const wait = whole(p, "wait", 0, cfg.maxWaitSeconds) ?? 0;
      if (wait > 0) server.timeout(req, 0); // a waiter may sit quietly for up to RS_MAX_WAIT
      return startOrWait({ ...holder, ttlSeconds }, wait, req.signal);
    },
    (o) =>
      o.ok && o.next.release
        ? { message: describeRelease(o.next.release), releaseId: o.next.release.id }
        : { message: "" },
  );

  const handleStop = mutation(
    "stop",
    (p) => {
      const id = whole(p, "id", 1, Number.MAX_SAFE_INTEGER);
      const name = text(p, "name");
      return transact((s, now) => stop(s, id, name, now));
    },
    () => ({ message: "the release is over" }),
  );

  const handleRenew = mutation(
    "renew",
    (p) => {
      const id = whole(p, "id", 1, Number.MAX_SAFE_INTEGER);
      if (id === null) throw new Invalid("id is required: pass the release id from X-Release-Id, e.g. /renew?id=42");
      const ttl = whole(p, "ttl", 1, MAX_TTL_SECONDS) ?? cfg.ttlSeconds;
      if (ttl === null)
        throw new Invalid(
          `ttl is required (the daemon has no RS_TTL): a whole number of seconds from 1 to ${MAX_TTL_SECONDS}`,
        );
      return transact((s, now) => renew(s, id, ttl, now));
    },
    (o) => ({
      message: o.ok && o.next.release?.expiresAt ? `the lease now ends at ${iso(o.next.release.expiresAt)}` : "",
    }),
  );

  const handleBlock = mutation(
    "block",
    (p) => {
      const holder = { name: text(p, "name"), reason: text(p, "reason") };
      return transact((s, now) => block(s, holder, now), ROOT);
    },
    (o) => ({ message: o.ok && o.next.block ? describeBlock(o.next.block) : "" }),
  );

  const handleUnblock = mutation(
    "unblock",
    (p) => {
      const name = text(p, "name");
      return transact((s, now) => unblock(s, name, now), ROOT);
    },
    () => ({ message: "releasing is open again" }),
  );

  function handleStatus(req: Request): Response | Promise<Response> {
    const render = () =>
      wantsJson(req.url, req)
        ? Response.json(statusJson(), { headers: SECURITY_HEADERS })
        : new Response(statusText(), { headers: { ...SECURITY_HEADERS, "Content-Type": PLAIN } });
    return afterFreshening(render);
  }

  function handleHistory(req: Request): Response | Promise<Response> {
    const url = req.url;
    const p = readQuery(url);
    if (!(p instanceof Map)) return answer(wantsJson(url, req), p);
    let limit: number;
    try {
      limit = whole(p, "limit", 1, 1000) ?? 50;
    } catch (e) {
      return answer(wantsJson(url, req), refuse("invalid", (e as Error).message));
    }
    const format = (events: Event[]) => {
      if (wantsJson(url, req)) return Response.json({ events: events.map(eventJson) }, { headers: SECURITY_HEADERS });
      const lines = events.map((e) => `${iso(e.at)}  ${e.kind.padEnd(10)}  ${describeEvent(e)}\n`);
      return new Response(lines.join(""), { headers: { ...SECURITY_HEADERS, "Content-Type": PLAIN } });
    };
    const events = history(limit);
    return events instanceof Promise ? events.then(format) : format(events);
  }

  function handleHealth(): Response {
    const [status, body] = engine.closing
      ? [503, "shutting down\n"]
      : isHealthy()
        ? [200, "ok\n"]
        : [503, `storage failing: ${health().problem ?? "the release state cannot be saved"}; see the daemon's log\n`];
    return new Response(body, { status, headers: { ...SECURITY_HEADERS, "Content-Type": PLAIN } });
  }

  function handleMetrics(): Response | Promise<Response> {
    const render = () =>
      new Response(renderMetrics(state(), waitingList().length, isHealthy()), {
        headers: { ...SECURITY_HEADERS, "Content-Type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    return afterFreshening(render);
  }

  // Server-Sent Events: a snapshot on connect, then one event per change, for the page and `curl -N`.
  function handleEvents(req: Request, server: Server<undefined>): Response {
    server.timeout(req, 0); // a stream is quiet between changes; Bun would cut it after 10 s
    let listener: EventStream | null = null;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        listener = controller;
        eventStreams.add(controller);
        controller.enqueue(sse("status", { status: statusJson() }, "retry: 1000\n"));
      },
      cancel() {
        if (listener) eventStreams.delete(listener);
      },
    });
    return new Response(stream, {
      headers: { ...SECURITY_HEADERS, "Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no" },
    });
  }

  function handlePage(): Response {
    return new Response(page, {
      headers: { ...SECURITY_HEADERS, ...pageSecurityHeaders(), "Content-Type": "text/html; charset=utf-8" },
    });
  }

  onCommit(({ events }) => broadcastChange(events));
  setInterval(() => broadcast(null, null), 15_000).unref(); // a comment now and then keeps proxies from closing idle streams

  const routes = {
    "/": { GET: handlePage },
    "/start": { GET: handleStart, POST: handleStart },
    "/stop": { GET: handleStop, POST: handleStop },
    "/renew": { GET: handleRenew, POST: handleRenew },
    "/block": { GET: handleBlock, POST: handleBlock },
    "/unblock": { GET: handleUnblock, POST: handleUnblock },
    "/status": { GET: handleStatus },
    "/history": { GET: handleHistory },
    "/healthz": { GET: handleHealth },
    "/metrics": { GET: handleMetrics },
    "/events": { GET: handleEvents },
  };

  function notAllowed(req: Request, path: keyof typeof routes): Response {
    const methods = Object.keys(routes[path]);
    const allow = (methods.includes("POST") ? methods : [...methods, "HEAD"]).join(", ");
    const res = answer(
      wantsJson(req.url, req),
      refuse("method-not-allowed", `${req.method} is not allowed on ${path}; use ${allow}`),
    );
    res.headers.set("Allow", allow);
    return res;
  }

  return Bun.serve({
    port: cfg.port,
    hostname: cfg.host,
    development: false,
    maxRequestBodySize: 64 * 1024,
    routes,
    // Anything the routes did not take: a wrong method on a known path, or an unknown path.
    fetch(req) {
      const path = new URL(req.url).pathname;
      if (!(path in routes))
        return answer(
          wantsJson(req.url, req),
          refuse("not-found", `there is no ${path}; see the README for the endpoints`),
        );
      return notAllowed(req, path as keyof typeof routes);
    },
    error(e) {
      log.error(`internal error while answering a request: ${e.message}`);
      return new Response("0\n", { status: 500, headers: { ...SECURITY_HEADERS, "Content-Type": PLAIN } });
    },
  });
}

// bun-types declares .html imports as HTML bundles; with type "text" Bun embeds the file as a string.
const page = pageText as unknown as string;

/** Renders once the state is current: at once alone, after a read from the database with replicas. */
function afterFreshening(render: () => Response): Response | Promise<Response> {
  const fresh = freshen();
  return fresh ? fresh.then(render) : render();
}

// ---- live events ----

type EventStream = ReadableStreamDefaultController<Uint8Array>;
const eventStreams = new Set<EventStream>();
const encoder = new TextEncoder();

const sse = (event: string, data: unknown, prefix = "") =>
  encoder.encode(`${prefix}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);

function broadcast(event: string | null, data: unknown) {
  const frame = event === null ? encoder.encode(": keep-alive\n\n") : sse(event, data);
  for (const stream of eventStreams) {
    try {
      stream.enqueue(frame);
    } catch {
      eventStreams.delete(stream); // the client went away
    }
  }
}

/** Sends a change to every open /events stream (also changes made through other replicas). */
export const broadcastChange = (events: Event[]): void =>
  broadcast("change", { events: events.map(eventJson), status: statusJson() });

/** At shutdown: end every event stream, so that the server can finish. */
export function closeEventStreams(): void {
  for (const stream of eventStreams) {
    try {
      stream.close();
    } catch {}
  }
  eventStreams.clear();
}

// The page's inline script and style are allowed by their hashes, and nothing else is.
// Worked out on the first visit, not at start-up.
const inlineHash = (tag: string) => {
  const body = page.slice(page.indexOf(`<${tag}>`) + tag.length + 2, page.indexOf(`</${tag}>`));
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

let tokenRequired = false; // told to the page, so it asks for the token before the first change

/** Formats an outcome as the original did (body 1 or 0), or as JSON when asked. */
function answer(json: boolean, o: Outcome, success: Success = { message: "" }): Response {
  const status = o.ok ? 200 : HTTP_STATUS[o.reason];
  const releaseId = o.ok ? success.releaseId : undefined;
  const headers = o.ok ? grantHeaders(releaseId, json) : refusalHeaders(o, json);
  if (!json) return new Response(o.ok ? "1\n" : "0\n", { status, headers });
  const body = {
    ok: o.ok,
    reason: o.ok ? null : o.reason,
    message: o.ok ? success.message : o.message,
    ...(releaseId !== undefined ? { releaseId } : {}),
    status: statusJson(),
  };
  return new Response(JSON.stringify(body), { status, headers });
}

const JSON_TYPE = "application/json; charset=utf-8";

const grantHeaders = (releaseId: number | undefined, json: boolean): Record<string, string> => ({
  ...SECURITY_HEADERS,
  "Content-Type": json ? JSON_TYPE : PLAIN,
  ...(releaseId !== undefined ? { "X-Release-Id": String(releaseId) } : {}),
});

// The same refusal is often given many times over (every start while a release runs):
// its headers are built once. Bounded, as refusals name who asked for what.
const refusalHeaderCache = new Map<string, Headers>();
function refusalHeaders(o: Refusal, json: boolean): Headers {
  const key = `${json} ${o.reason} ${o.message}`;
  let headers = refusalHeaderCache.get(key);
  if (headers) return headers;
  headers = new Headers({
    ...SECURITY_HEADERS,
    "Content-Type": json ? JSON_TYPE : PLAIN,
    "X-Reason": headerSafe(o.message),
    "X-Reason-Code": o.reason,
    ...(o.reason === "unauthorized" ? { "WWW-Authenticate": "Bearer" } : {}),
  });
  if (refusalHeaderCache.size >= 64) refusalHeaderCache.clear();
  refusalHeaderCache.set(key, headers);
  return headers;
}

function statusJson() {
  const { release } = state();
  const block = blockOn(state())?.block ?? null;
  return {
    running: release !== null,
    blocked: block !== null,
    release: release && {
      id: release.id,
      name: release.name,
      reason: release.reason,
      startedAt: iso(release.startedAt),
      expiresAt: release.expiresAt === null ? null : iso(release.expiresAt),
    },
    block: block && { name: block.name, reason: block.reason, since: iso(block.since) },
    queue: waitingList().map((w) => ({ name: w.name, reason: w.reason, since: iso(w.since) })),
    lastReleaseId: state().lastId,
    estimate: estimate(release),
    tokenRequired,
    healthy: isHealthy(),
    store: storeDescription(),
  };
}

function statusText(): string {
  const now = Date.now();
  const { release } = state();
  const block = blockOn(state())?.block ?? null;
  const lines = [
    release
      ? `running: ${describeRelease(release)}, for ${duration(now - release.startedAt)}${release.expiresAt === null ? "" : `; lease ends ${iso(release.expiresAt)}`}`
      : "idle: no release is running",
  ];
  if (block) lines.push(`blocked: ${describeBlock(block)}`);
  const waiting = waitingList();
  if (waiting.length)
    lines.push(
      `waiting: ${waiting.map((w, i) => `${i + 1}. ${w.name || UNKNOWN_USER} since ${iso(w.since)}`).join(", ")}`,
    );
  return `${lines.join("\n")}\n`;
}

const eventJson = (e: Event) => ({
  at: iso(e.at),
  kind: e.kind,
  releaseId: e.releaseId,
  name: e.name,
  reason: e.reason,
  message: describeEvent(e),
});

function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

// Header values must be Latin-1; names may not be, so percent-encode anything outside printable ASCII.
const headerSafe = (s: string) =>
  /^[\x20-\x7e]*$/.test(s) ? s : s.replace(/[^\x20-\x7e]/gu, (c) => encodeURIComponent(c));
