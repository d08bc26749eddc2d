// What a request says: its parameters, decoded strictly and checked against
// their limits, and who may send it. A request that is itself wrong becomes a
// refusal (`invalid`, `too-large`, `unsupported-media-type`, `forbidden`,
// `unauthorized`) and changes nothing.
import { wholeNumber } from "../numbers.ts";
import { type Refusal, refuse } from "../release.ts";
import { VERSION_RULE, validVersion } from "../version.ts";
import { unreadable, visible } from "../visible.ts";

const MAX_TEXT = 200; // characters in a name or reason
const MAX_URL = 8192; // bytes in a request's URL
const FORM = "application/x-www-form-urlencoded";

/** A request that is itself wrong: answered 400 with reason `invalid`, changing nothing. Its message may quote a parameter as sent: made visible. */
export class Invalid extends Error {
  constructor(message: string) {
    super(visible(message));
  }
}

/**
 * The parameters, each given once (twice is invalid); `lock`, which a start may repeat to claim several locks,
 * keeps every value in `locks` (in the order sent, the query's before the body's).
 */
export type Params = Map<string, string> & { locks?: string[] };

/** The only parameter whose every value counts: a claim's locks. */
const REPEATED = "lock";

/**
 * The query string, plus a form body on POST; a Refusal when it cannot be decoded, or when a body
 * comes that is not a form. A body is never ignored: it may hold the very parameter (`id=`, `ttl=`)
 * that makes the request safe.
 */
export function readParams(req: Request, url: string): Params | Refusal | Promise<Params | Refusal> {
  const query = readQuery(url);
  if (!(query instanceof Map) || !hasBody(req)) return query;
  // Bun hands a GET no body to read, even one it was sent.
  if (req.method !== "POST")
    return refuse(
      "invalid",
      `a ${req.method} request with a body is not understood: put the parameters in the query string, or POST them as ${FORM}`,
    );
  const type = req.headers.get("content-type") ?? "";
  // Media types are case-insensitive (RFC 9110); parameters such as charset may follow.
  if (type.split(";")[0]?.trim().toLowerCase() !== FORM)
    return refuse(
      "unsupported-media-type",
      `${type === "" ? "a body without a Content-Type" : `a body of type ${type.slice(0, 60)}`} is not understood: send parameters in the query string or as ${FORM} (curl --data does)`,
    );
  // A form in another encoding (UTF-16) or compressed would be read as other parameters, or none.
  const charset = /;\s*charset\s*=\s*"?([^";\s]*)/i.exec(type)?.[1]?.toLowerCase();
  const encoding = req.headers.get("content-encoding")?.trim().toLowerCase();
  if ((charset !== undefined && charset !== "utf-8" && charset !== "utf8") || (encoding && encoding !== "identity"))
    return refuse(
      "unsupported-media-type",
      `a form body ${encoding && encoding !== "identity" ? `with Content-Encoding ${encoding.slice(0, 30)}` : `in charset ${charset?.slice(0, 30)}`} is not understood: send it uncompressed, in UTF-8`,
    );
  // A client that went away mid-body never hears an answer: it must not be granted anything.
  const cutShort = () => refuse("invalid", "the request body was cut short: send the whole body it declares");
  return req.text().then((body) => {
    if (req.signal.aborted) return cutShort();
    const fromBody = parsePairs(body);
    if (!(fromBody instanceof Map)) return fromBody;
    for (const [k, v] of fromBody) {
      if (query.has(k) && k !== REPEATED) return givenTwice(k, "both in the query string and in the body");
      query.set(k, v);
    }
    if (fromBody.locks) query.locks = [...(query.locks ?? []), ...fromBody.locks];
    return query;
  }, cutShort);
}

// Whether a body comes with the request, by its framing (RFC 9112): a Content-Length above 0, or any
// Transfer-Encoding. Content-Type says nothing about it: a body is sent without one, and one is named without a body.
function hasBody(req: Request): boolean {
  const length = req.headers.get("content-length");
  return req.headers.has("transfer-encoding") || (length !== null && Number(length) !== 0);
}

export function readQuery(url: string): Params | Refusal {
  if (url.length > MAX_URL) return refuse("too-large", `the URL is longer than ${MAX_URL} bytes`);
  const q = url.indexOf("?");
  return q < 0 ? new Map() : parsePairs(url.slice(q + 1));
}

// Strict percent-decoding: broken escapes and invalid UTF-8 are refused, not replaced.
function parsePairs(s: string): Params | Refusal {
  const params: Params = new Map();
  for (const pair of s.split("&")) {
    if (!pair) continue;
    const eq = pair.indexOf("=");
    try {
      const key = decode(eq < 0 ? pair : pair.slice(0, eq));
      const value = decode(eq < 0 ? "" : pair.slice(eq + 1));
      if (key === REPEATED) params.locks = [...(params.locks ?? []), value];
      else if (params.has(key)) return givenTwice(key, "twice");
      if (!params.has(key)) params.set(key, value);
    } catch {
      return refuse(
        "invalid",
        "the query string has a broken %-escape or invalid UTF-8: percent-encode parameters as UTF-8",
      );
    }
  }
  return params;
}

// Which of two values was meant cannot be known (ttl=100&ttl=5): neither is taken.
const givenTwice = (key: string, how: string): Refusal =>
  refuse("invalid", `${visible(key.slice(0, 40))} is given ${how}: give each parameter once`);

const decode = (s: string) => (s.includes("%") || s.includes("+") ? decodeURIComponent(s.replaceAll("+", " ")) : s);

export function text(p: Params, key: string): string {
  const value = (p.get(key) ?? "").trim();
  if ([...value].length > MAX_TEXT) throw new Invalid(`${key} is longer than ${MAX_TEXT} characters: shorten it`);
  // Invisible format characters (direction marks, zero-width) make a name read as another in logs and on the page.
  if (unreadable(value))
    throw new Invalid(
      `${key} has control characters, invisible format characters (such as direction marks) or invalid UTF-8: send plain text, percent-encoded as UTF-8`,
    );
  return value;
}

/** A whole number within limits; null when the parameter is absent. Present but empty (`id=` or `id`) is invalid. */
export function whole(p: Params, key: string, min: number, max: number): number | null {
  const raw = p.get(key);
  if (raw === undefined) return null;
  const n = wholeNumber(raw, min, max);
  if (n === null)
    throw new Invalid(
      `${key}=${raw.slice(0, 40)} is not valid: expected a whole number from ${min} to ${max}${raw === "" ? " (it is empty)" : ""}`,
    );
  return n;
}

/** A start's `version=`: what the deploy calls its build; undefined when absent, invalid when empty or malformed. */
export function version(p: Params): string | undefined {
  const raw = p.get("version");
  if (raw === undefined) return undefined;
  if (!validVersion(raw))
    throw new Invalid(
      `version=${raw.slice(0, 40)} is not a version: use ${VERSION_RULE}${raw === "" ? " (it is empty; leave version out instead)" : ""}`,
    );
  return raw;
}

/** Refuses changes sent cross-site by a browser, or from a host name a rebinding page could use. */
export function sameSite(req: Request, hosts: readonly string[]): Refusal | null {
  const site = req.headers.get("sec-fetch-site");
  const origin = req.headers.get("origin");
  if (site === null && origin === null) return null; // not a browser: scripts are not affected
  const host = req.headers.get("host") ?? "";
  if ((site && site !== "same-origin" && site !== "none") || (origin && !sameOrigin(origin, host)))
    return refuse("forbidden", "state changes are not accepted from other web sites");
  if (!trustedHost(host, hosts))
    return refuse(
      "forbidden",
      `a browser reached this daemon as ${host.slice(0, 60)}, which is not an IP address, localhost or a name in RS_HOSTS: add the name to RS_HOSTS to allow it`,
    );
  return null;
}

function sameOrigin(origin: string, host: string): boolean {
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

// A page served from evil.example can point that name at this daemon (DNS rebinding): its requests
// then look same-origin. Only names we know stand for us are accepted from a browser.
function trustedHost(host: string, hosts: readonly string[]): boolean {
  const name = host.replace(/:\d+$/, "").toLowerCase();
  if (name === "localhost" || /^\d{1,3}(\.\d{1,3}){3}$/.test(name) || /^\[[0-9a-f:.]+\]$/.test(name)) return true;
  return hosts.includes(name);
}

/** Whether the URL carries a token (`token=` or `access_token=`), which belongs in the Authorization header. */
export function tokenInUrl(url: string): boolean {
  const q = url.indexOf("?");
  if (q < 0) return false;
  const query = url.slice(q + 1);
  if (!/token/i.test(query) && !query.includes("%")) return false; // the common case, without decoding
  const p = readQuery(url);
  return p instanceof Map && hasTokenParam(p);
}

/** A parameter that looks like a token, in any spelling: token, Token, access_token, access-token, accessToken, token[]. */
export const hasTokenParam = (p: Params): boolean =>
  [...p.keys()].some((k) => /^(access)?token$/.test(k.toLowerCase().replace(/[^a-z]/g, "")));

/** The bearer token of a request; the scheme is case-insensitive (RFC 9110), and spaces around the token do not count. */
export function bearer(req: Request): string {
  const auth = req.headers.get("authorization") ?? "";
  const m = /^bearer +(.*)$/i.exec(auth);
  return m ? (m[1] as string).trim() : "";
}
