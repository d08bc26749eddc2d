// What a request says: its parameters, decoded strictly and checked against
// their limits. A request that is itself wrong becomes a refusal (`invalid`,
// `too-large`) or throws Invalid, and changes nothing.
import { type Refusal, refuse } from "../release.ts";

const MAX_TEXT = 200; // characters in a name or reason
const MAX_URL = 8192; // bytes in a request's URL

/** A request that is itself wrong: answered 400 with reason `invalid`, changing nothing. */
export class Invalid extends Error {}

export type Params = Map<string, string>;

export const wantsJson = (url: string, req: Request) =>
  /[?&]format=json(&|$)/.test(url) || (req.headers.get("accept") ?? "").includes("application/json");

/** The query string, plus a form body on POST; a Refusal when it cannot be decoded. */
export function readParams(req: Request, url: string): Params | Refusal | Promise<Params | Refusal> {
  const query = readQuery(url);
  if (req.method !== "POST" || !(query instanceof Map)) return query;
  if (!(req.headers.get("content-type") ?? "").startsWith("application/x-www-form-urlencoded")) return query;
  return req.text().then((body) => {
    // A client that went away mid-body never hears an answer: it must not be granted anything.
    if (req.signal.aborted) return refuse("invalid", "the request body was cut short");
    const fromBody = parsePairs(body);
    if (!(fromBody instanceof Map)) return fromBody;
    for (const [k, v] of fromBody) if (!query.has(k)) query.set(k, v);
    return query;
  });
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
      if (!params.has(key)) params.set(key, decode(eq < 0 ? "" : pair.slice(eq + 1)));
    } catch {
      return refuse(
        "invalid",
        "the query string has a broken %-escape or invalid UTF-8: percent-encode parameters as UTF-8",
      );
    }
  }
  return params;
}

const decode = (s: string) => (s.includes("%") || s.includes("+") ? decodeURIComponent(s.replaceAll("+", " ")) : s);

export function text(p: Params, key: string): string {
  const value = (p.get(key) ?? "").trim();
  if ([...value].length > MAX_TEXT) throw new Invalid(`${key} is longer than ${MAX_TEXT} characters: shorten it`);
  if (/[\p{Cc}\p{Cs}\u2028\u2029]/u.test(value))
    throw new Invalid(`${key} has control characters (such as a newline): send plain text`);
  return value;
}

export function whole(p: Params, key: string, min: number, max: number): number | null {
  const raw = p.get(key);
  if (raw === undefined || raw === "") return null;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max)
    throw new Invalid(`${key}=${raw.slice(0, 40)} is not valid: expected a whole number from ${min} to ${max}`);
  return n;
}

export function sameOrigin(origin: string, req: Request): boolean {
  try {
    return new URL(origin).host === req.headers.get("host");
  } catch {
    return false;
  }
}

// Bun's hasher rather than node:crypto, which alone adds about 4 ms to start-up.
export const sha256 = (s: string) => new Bun.CryptoHasher("sha256").update(s).digest();

// Compares two digests of equal length in time that does not depend on where they differ.
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  let difference = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return difference === 0;
}
