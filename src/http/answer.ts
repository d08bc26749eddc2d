// The one place an outcome becomes an answer: body `1` or `0` (or JSON), the
// headers that say why, and the HTTP status. Security headers and content
// types are spelled here and nowhere else.
import type { Outcome, Reason, Refusal } from "../release.ts";

export const HTTP_STATUS: Record<Reason, number> = {
  running: 200,
  blocked: 200,
  frozen: 200,
  queued: 200,
  "not-running": 200,
  "not-blocked": 200,
  "wrong-id": 200,
  full: 200,
  ambiguous: 200,
  superseded: 200,
  stale: 200,
  timeout: 200,
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  "not-found": 404,
  "unknown-lock": 404,
  "method-not-allowed": 405,
  "too-large": 414,
  "unsupported-media-type": 415,
  storage: 503,
  "shutting-down": 503,
  "too-many-streams": 503,
  "issuer-unreachable": 503,
};

export const PLAIN = "text/plain; charset=utf-8";
export const JSON_TYPE = "application/json; charset=utf-8";
export const SECURITY_HEADERS = { "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store" };

/** What a successful change tells the caller beyond its 1. */
export type Success = { message: string; releaseId?: number; locks?: string[] }; // locks: every lock a grant holds

export const wantsJson = (url: string, req: Request): boolean =>
  /[?&]format=json(&|$)/.test(url) || (req.headers.get("accept") ?? "").includes("application/json");

// A Response copies a Headers object it is given far faster (~0.4 µs) than it reads a plain
// object's properties (~0.9 µs), so the few fixed sets of headers are built once, per type.
const fixedHeaders = new Map<string, Headers>();
const headersFor = (type: string): Headers => {
  let headers = fixedHeaders.get(type);
  if (!headers) {
    headers = new Headers({ ...SECURITY_HEADERS, "Content-Type": type });
    fixedHeaders.set(type, headers);
  }
  return headers;
};

/** Plain text (or any type) with the security headers. */
export const text = (body: string, status = 200, type = PLAIN): Response =>
  new Response(body, { status, headers: headersFor(type) });

/** JSON with the security headers. */
export const json = (body: unknown, status = 200): Response =>
  new Response(JSON.stringify(body), { status, headers: headersFor(JSON_TYPE) });

/**
 * Formats an outcome as the original did (body 1 or 0), or as JSON when asked; `status` gives
 * the lock's status object for JSON answers.
 */
export function answer(
  asJson: boolean,
  o: Outcome,
  success: Success = { message: "" },
  status: () => unknown = () => null,
): Response {
  const code = o.ok ? 200 : HTTP_STATUS[o.reason];
  const releaseId = o.ok ? success.releaseId : undefined;
  const locks = o.ok ? success.locks : undefined;
  const headers = o.ok ? grantHeaders(releaseId, asJson, success.message, locks) : refusalHeaders(o, asJson);
  if (!asJson) return new Response(o.ok ? "1\n" : "0\n", { status: code, headers });
  const body = {
    ok: o.ok,
    reason: o.ok ? null : o.reason,
    message: o.ok ? success.message : o.message,
    ...(releaseId !== undefined ? { releaseId } : {}),
    ...(locks ? { lock: locks[0], locks } : {}),
    status: status(),
  };
  return new Response(JSON.stringify(body), { status: code, headers });
}

const grantHeaders = (
  releaseId: number | undefined,
  asJson: boolean,
  message: string,
  locks: string[] | undefined,
): Record<string, string> => ({
  ...SECURITY_HEADERS,
  "Content-Type": asJson ? JSON_TYPE : PLAIN,
  ...(releaseId !== undefined ? { "X-Release-Id": String(releaseId) } : {}),
  // Every lock the release holds, in the order asked: a pool's answer names the child it took.
  ...(locks ? { "X-Lock": locks.join(",") } : {}),
  // A change that is not the whole story (an unblock under a block from above) says so.
  ...(message.startsWith("still ") ? { "X-Reason": headerSafe(message) } : {}),
});

// The same refusal is often given many times over (every start while a release runs):
// its headers are built once. Looked up by the message itself, which is the same string each
// time (its words are worked out once per release), so no key is built per request. Bounded,
// as refusals name who asked for what.
type Built = { reason: string; headers: Headers };
const refusalHeaderCache = { text: new Map<string, Built>(), json: new Map<string, Built>() };
function refusalHeaders(o: Refusal, asJson: boolean): Headers {
  const cache = asJson ? refusalHeaderCache.json : refusalHeaderCache.text;
  const known = cache.get(o.message);
  if (known !== undefined && known.reason === o.reason) return known.headers;
  const headers = new Headers({
    ...SECURITY_HEADERS,
    "Content-Type": asJson ? JSON_TYPE : PLAIN,
    "X-Reason": headerSafe(o.message),
    "X-Reason-Code": o.reason,
    ...(o.reason === "unauthorized" ? { "WWW-Authenticate": "Bearer" } : {}),
  });
  if (cache.size >= 64) cache.clear();
  cache.set(o.message, { reason: o.reason, headers });
  return headers;
}

// Header values must be Latin-1; names may not be, so percent-encode anything outside printable ASCII.
const headerSafe = (s: string) =>
  /^[\x20-\x7e]*$/.test(s) ? s : s.replace(/[^\x20-\x7e]/gu, (c) => encodeURIComponent(c));
