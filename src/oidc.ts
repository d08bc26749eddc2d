// OpenID Connect ID tokens from CI systems, verified with no package: Bun's fetch and crypto.subtle.
// A token (a JWS in compact form, RFC 7515) names its issuer; the issuer's signing keys (a JWKS,
// RFC 7517) are found through its discovery document ({issuer}/.well-known/openid-configuration) or
// read from a file, and kept as long as the issuer's Cache-Control says. The key is chosen by the
// token's `kid`, and the algorithm comes from that key (RFC 7518: RS256 for RSA, ES256 for P-256),
// never from the token, so `alg: none` or an HMAC "signed" with a public key can never pass.
// An issuer that cannot be reached opens nothing: a token that needs it is refused as unreachable.

export type Claims = Record<string, unknown>;

/** What verifying a bearer token found: its claims, or why it is refused (never quoting the token). */
export type Verified =
  | { ok: true; claims: Claims }
  | { ok: false; reason: "unauthorized" | "issuer-unreachable"; message: string };

/** Where an issuer's keys come from: fetched by discovery, or a JWKS file's keys (already read). */
export type KeySource = { issuer: string; jwks: JsonWebKey[] | null };

/** exp, nbf and iat are allowed this much difference between the issuer's clock and ours. */
export const LEEWAY_SECONDS = 60;
/** An unknown kid makes the keys be fetched again, at most this often (a flood of made-up kids costs nothing). */
export const KID_REFETCH_MS = 60_000;
/** After a failed fetch, requests are refused at once for this long rather than each trying again. */
const RETRY_AFTER_FAILURE_MS = 5_000;
const FETCH_TIMEOUT_MS = 5_000;
const DEFAULT_FRESH_MS = 5 * 60_000; // keys served without Cache-Control
const MOST_FRESH_MS = 24 * 3600_000;
const MOST_BYTES = 1 << 20; // a discovery document or a JWKS larger than this is refused
const MIN_RSA_BITS = 2048;

type Alg = "RS256" | "ES256";
const VERIFY_PARAMS: Record<Alg, AlgorithmIdentifier | EcdsaParams> = {
  RS256: { name: "RSASSA-PKCS1-v1_5" },
  ES256: { name: "ECDSA", hash: "SHA-256" },
};
const IMPORT_PARAMS: Record<Alg, RsaHashedImportParams | EcKeyImportParams> = {
  RS256: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
  ES256: { name: "ECDSA", namedCurve: "P-256" },
};

// ---- issuers and their keys ----

/** https, or http on loopback only (for tests): anything else could be read or changed on the way. */
export function issuerProblem(issuer: string): string | null {
  if (!URL.canParse(issuer)) return "is not a URL";
  const u = new URL(issuer);
  if (u.search || u.hash || u.username || u.password) return "has a query, a fragment or credentials";
  if (u.protocol === "https:") return null;
  if (u.protocol === "http:" && isLoopback(u.hostname)) return null;
  return "is not https (plain http is allowed only on loopback, for tests)";
}
const isLoopback = (host: string) => host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);

/** A JWK we can verify with, and its algorithm; a string saying why not otherwise. */
export function keyAlgorithm(jwk: JsonWebKey & { kid?: unknown; use?: unknown }): Alg | string {
  if (jwk.use !== undefined && jwk.use !== "sig") return `use is ${JSON.stringify(jwk.use)}, not "sig"`;
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes("verify")))
    return "key_ops does not include verify";
  const b64 = (v: unknown) => typeof v === "string" && base64url(v) !== null;
  if (jwk.kty === "RSA") {
    if (jwk.alg !== undefined && jwk.alg !== "RS256") return `alg ${jwk.alg} is not RS256`;
    if (!b64(jwk.n) || !b64(jwk.e)) return "n or e is missing or not base64url";
    if ((base64url(jwk.n as string)?.length ?? 0) * 8 < MIN_RSA_BITS)
      return `the RSA key is under ${MIN_RSA_BITS} bits`;
    return "RS256";
  }
  if (jwk.kty === "EC") {
    if (jwk.crv !== "P-256") return `curve ${String(jwk.crv)} is not P-256`;
    if (jwk.alg !== undefined && jwk.alg !== "ES256") return `alg ${jwk.alg} is not ES256`;
    if (!b64(jwk.x) || !b64(jwk.y)) return "x or y is missing or not base64url";
    return "ES256";
  }
  return `kty ${JSON.stringify(jwk.kty)} is neither RSA nor EC`;
}

/** The keys of a JWKS document that can sign ID tokens, by kid; others (encryption keys, other curves) are left out. */
export function signingKeys(doc: unknown): Map<string, { alg: Alg; jwk: JsonWebKey }> | string {
  const keys = (doc as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) return 'it has no "keys" list';
  const found = new Map<string, { alg: Alg; jwk: JsonWebKey }>();
  for (const jwk of keys) {
    if (typeof jwk !== "object" || jwk === null || typeof jwk.kid !== "string" || jwk.kid === "") continue;
    const alg = keyAlgorithm(jwk);
    // Two keys under one kid would let the token choose between them: neither is used.
    if (found.has(jwk.kid)) found.set(jwk.kid, { alg: "none" as Alg, jwk });
    else if (alg === "RS256" || alg === "ES256") found.set(jwk.kid, { alg, jwk });
  }
  for (const [kid, k] of found) if ((k.alg as string) === "none") found.delete(kid);
  return found;
}

type Key = { alg: Alg; key: Promise<CryptoKey> };
type Keyring = {
  keys: Map<string, Key>;
  freshUntil: number; // keys fetched are used until then (their Cache-Control), file keys for ever
  fetchedAt: number | null;
  kidRefetchAt: number; // when an unknown kid last made the keys be fetched again
  failedAt: number;
  problem: string | null; // why the last fetch failed
  fetching: Promise<void> | null; // one fetch at a time, shared by every request that waits for it
  jwksUri: string | null;
};

// Fetched keyrings outlive a reload (the issuer's keys did not change); a file's keys are its own.
const fetched = new Map<string, Keyring>();
const fromFiles = new WeakMap<JsonWebKey[], Keyring>();

const emptyRing = (): Keyring => ({
  keys: new Map(),
  freshUntil: 0,
  fetchedAt: null,
  kidRefetchAt: 0,
  failedAt: 0,
  problem: null,
  fetching: null,
  jwksUri: null,
});

function keyringOf(source: KeySource): Keyring {
  if (source.jwks) {
    let ring = fromFiles.get(source.jwks);
    if (!ring) {
      ring = emptyRing();
      ring.keys = imported(signingKeys({ keys: source.jwks }));
      ring.freshUntil = Number.POSITIVE_INFINITY;
      fromFiles.set(source.jwks, ring);
    }
    return ring;
  }
  let ring = fetched.get(source.issuer);
  if (!ring) {
    ring = emptyRing();
    fetched.set(source.issuer, ring);
  }
  return ring;
}

function imported(keys: ReturnType<typeof signingKeys>): Map<string, Key> {
  const ring = new Map<string, Key>();
  if (typeof keys === "string") return ring;
  for (const [kid, { alg, jwk }] of keys) {
    const key = crypto.subtle.importKey("jwk", { ...jwk, ext: true }, IMPORT_PARAMS[alg], false, ["verify"]);
    key.catch(() => {}); // a key that will not import fails the tokens signed with it, not the daemon
    ring.set(kid, { alg, key });
  }
  return ring;
}

/** Fetches one JSON document: no redirects, a time limit, a size limit. */
async function getJson(url: string): Promise<{ doc: unknown; cacheControl: string | null }> {
  const res = await fetch(url, {
    redirect: "error",
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    headers: { Accept: "application/json" },
  });
  if (res.status !== 200) {
    await res.body?.cancel();
    throw new Error(`${url} answered HTTP ${res.status}`);
  }
  const body = await boundedText(res, url, Date.now() + FETCH_TIMEOUT_MS);
  try {
    return { doc: JSON.parse(body), cacheControl: res.headers.get("cache-control") };
  } catch {
    throw new Error(`${url} did not send JSON`);
  }
}

// The body, read no further than MOST_BYTES and no longer than until `deadline`: an issuer (or a proxy before it)
// that sends gigabytes, or trickles them, must not fill the daemon's memory or hold a fetch open.
async function boundedText(res: Response, url: string, deadline: number): Promise<string> {
  const declared = Number(res.headers.get("content-length") ?? 0);
  const tooLarge = () => new Error(`${url} sent more than ${MOST_BYTES} bytes`);
  if (declared > MOST_BYTES) {
    await res.body?.cancel();
    throw tooLarge();
  }
  const reader = res.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const left = deadline - Date.now();
    const next = await Promise.race([
      reader.read(),
      new Promise<"late">((resolve) => setTimeout(() => resolve("late"), Math.max(left, 0)).unref?.()),
    ]);
    if (next === "late") {
      await reader.cancel().catch(() => {});
      throw new Error(`${url}: no whole answer within ${FETCH_TIMEOUT_MS / 1000} s`);
    }
    if (next.done) break;
    size += next.value.byteLength;
    if (size > MOST_BYTES) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(next.value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}

/** How long the keys may be used, from the JWKS answer's Cache-Control (max-age), within bounds. */
function freshFor(cacheControl: string | null): number {
  if (cacheControl === null) return DEFAULT_FRESH_MS;
  if (/\b(no-store|no-cache)\b/i.test(cacheControl)) return 1000;
  const age = /\bmax-age\s*=\s*"?(\d+)"?/i.exec(cacheControl)?.[1];
  if (age === undefined) return DEFAULT_FRESH_MS;
  return Math.min(Math.max(Number(age) * 1000, 1000), MOST_FRESH_MS);
}

/** The issuer's discovery document, then its keys (OpenID Connect Discovery 1.0, section 4). */
export async function fetchKeys(issuer: string): Promise<{ jwksUri: string; keys: Map<string, Key>; freshMs: number }> {
  const discoveryUrl = `${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`;
  const doc = (await getJson(discoveryUrl)).doc as { issuer?: unknown; jwks_uri?: unknown } | null;
  // The document must be the issuer's own: one naming another issuer could hand over another's keys.
  if (doc?.issuer !== issuer)
    throw new Error(`${discoveryUrl} names the issuer ${JSON.stringify(doc?.issuer)}, not ${issuer}`);
  const jwksUri = doc?.jwks_uri;
  if (typeof jwksUri !== "string" || issuerProblem(jwksUri) !== null)
    throw new Error(`${discoveryUrl} has no jwks_uri that is an https URL`);
  const { doc: jwks, cacheControl } = await getJson(jwksUri);
  const keys = signingKeys(jwks);
  if (typeof keys === "string") throw new Error(`${jwksUri} is not a JWKS: ${keys}`);
  return { jwksUri, keys: imported(keys), freshMs: freshFor(cacheControl) };
}

function refetch(issuer: string, ring: Keyring, now: () => number): Promise<void> {
  ring.fetching ??= fetchKeys(issuer)
    .then(
      ({ jwksUri, keys, freshMs }) => {
        ring.keys = keys;
        ring.jwksUri = jwksUri;
        ring.fetchedAt = now();
        ring.freshUntil = now() + freshMs;
        ring.problem = null;
      },
      (e: Error) => {
        ring.failedAt = now();
        ring.problem = e.name === "TimeoutError" ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : e.message;
      },
    )
    .finally(() => {
      ring.fetching = null;
    });
  return ring.fetching;
}

/** Fetches each issuer's keys now (at start-up and on a reload), so the first token need not wait; says how it went. */
export async function warmUp(sources: KeySource[]): Promise<string[]> {
  const said: string[] = [];
  for (const source of sources) {
    if (source.jwks) continue;
    const ring = keyringOf(source);
    await refetch(source.issuer, ring, Date.now);
    said.push(
      ring.problem
        ? `cannot fetch the keys of ${source.issuer} (${ring.problem}): its tokens are answered issuer-unreachable until it can`
        : `keys of ${source.issuer}: ${[...ring.keys].map(([kid, k]) => `${kid} (${k.alg})`).join(", ") || "none that can sign"}`,
    );
  }
  return said;
}

// ---- the token ----

const unauthorized = (message: string): Verified => ({ ok: false, reason: "unauthorized", message });
const unreachable = (issuer: string, why: string): Verified => ({
  ok: false,
  reason: "issuer-unreachable",
  message: `the keys of ${issuer} cannot be had (${why}), so its tokens cannot be checked: try again shortly`,
});

/** A bearer string shaped as a compact JWS: three base64url parts (the last empty for alg none, refused in words). */
export const looksLikeJwt = (bearer: string): boolean =>
  /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(bearer);

/** Strict base64url (RFC 7515 section 2): no padding, nothing after the last bits. */
function base64url(text: string): Buffer | null {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const bytes = Buffer.from(text, "base64url");
  return bytes.toString("base64url") === text ? bytes : null;
}

function jsonObject(part: string): Record<string, unknown> | null {
  const bytes = base64url(part);
  if (!bytes) return null;
  try {
    const value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

const isoSeconds = (s: number) => new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");

/**
 * Verifies a compact JWS from one of `sources` (by its iss): the signature with the key its kid names,
 * then exp, nbf and iat. The audience and the claims are the caller's to match.
 */
export async function verify(token: string, sources: KeySource[], now: () => number = Date.now): Promise<Verified> {
  const parts = token.split(".");
  if (parts.length !== 3) return unauthorized("the bearer token is neither a known token nor a JWT");
  const [h = "", p = "", s = ""] = parts;
  const header = jsonObject(h);
  const payload = jsonObject(p);
  const signature = base64url(s);
  if (!header || !payload || !signature)
    return unauthorized("the bearer token is not a valid JWT: its parts must be base64url JSON objects");
  const alg = header.alg;
  if (alg === "none" || (typeof alg === "string" && /^HS/i.test(alg)))
    return unauthorized(
      `the token's alg ${alg} is refused: ID tokens must be signed with the issuer's key (RS256, ES256)`,
    );
  if (alg !== "RS256" && alg !== "ES256")
    return unauthorized(`the token's alg ${JSON.stringify(alg)} is not supported: expected RS256 or ES256`);
  if (header.crit !== undefined)
    return unauthorized("the token has critical header parameters (crit), which this daemon does not understand");
  if (typeof header.kid !== "string" || header.kid === "")
    return unauthorized("the token has no kid: the issuer's key that signed it cannot be chosen");
  const iss = payload.iss;
  const source = sources.find((t) => t.issuer === iss);
  if (!source)
    return unauthorized(
      `the token's issuer ${JSON.stringify(iss)} is not one that a [[trust]] of the configuration names`,
    );
  const found = await keyFor(source, header.kid, now);
  if ("ok" in found) return found;
  // The key says how it signs; a token that claims another algorithm is not what that key made.
  if (found.alg !== alg)
    return unauthorized(`the token says alg ${alg}, but its key ${header.kid} signs with ${found.alg}`);
  if (alg === "ES256" && signature.length !== 64) return unauthorized("the token's signature is not one of ES256");
  let good = false;
  try {
    good = await crypto.subtle.verify(
      VERIFY_PARAMS[alg],
      await found.key,
      new Uint8Array(signature),
      new TextEncoder().encode(`${h}.${p}`),
    );
  } catch {
    good = false;
  }
  if (!good)
    return unauthorized(`the token's signature does not verify with the key ${header.kid} of ${source.issuer}`);
  return timely(payload, now() / 1000);
}

async function keyFor(source: KeySource, kid: string, now: () => number): Promise<Key | Verified> {
  const ring = keyringOf(source);
  if (source.jwks) {
    const key = ring.keys.get(kid);
    return key ?? unauthorized(`the token's kid ${kid} is not among the keys of the jwks_file for ${source.issuer}`);
  }
  if (now() >= ring.freshUntil) {
    // Keys that are no longer fresh are not used: fetched again, or the token waits for an issuer that answers.
    if (ring.fetching === null && now() - ring.failedAt < RETRY_AFTER_FAILURE_MS)
      return unreachable(source.issuer, ring.problem ?? "it did not answer");
    await refetch(source.issuer, ring, now);
    if (now() >= ring.freshUntil) return unreachable(source.issuer, ring.problem ?? "it did not answer");
  }
  let key = ring.keys.get(kid);
  if (key) return key;
  // An unknown kid may be a rotated key: the keys are fetched again, but at most once a minute.
  if (now() - ring.kidRefetchAt < KID_REFETCH_MS)
    return unauthorized(
      `the token's kid ${kid} is not among the keys of ${source.issuer} (fetched ${isoSeconds((ring.fetchedAt ?? 0) / 1000)}); they are fetched again for an unknown kid at most once a minute`,
    );
  ring.kidRefetchAt = now();
  await refetch(source.issuer, ring, now);
  if (ring.problem && now() - ring.failedAt < RETRY_AFTER_FAILURE_MS) return unreachable(source.issuer, ring.problem);
  key = ring.keys.get(kid);
  return key ?? unauthorized(`the token's kid ${kid} is not among the keys of ${source.issuer}, even fetched again`);
}

/** exp (required), nbf and iat, each within LEEWAY_SECONDS of our clock. */
function timely(claims: Claims, nowSeconds: number): Verified {
  const { exp, nbf, iat } = claims;
  const number = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  if (!number(exp)) return unauthorized("the token has no exp: a token that never expires is refused");
  if ((nbf !== undefined && !number(nbf)) || (iat !== undefined && !number(iat)))
    return unauthorized("the token's nbf or iat is not a number of seconds");
  if (nowSeconds > (exp as number) + LEEWAY_SECONDS)
    return unauthorized(`the token expired at ${isoSeconds(exp as number)}: ask the CI for a fresh one`);
  if (nbf !== undefined && nowSeconds + LEEWAY_SECONDS < (nbf as number))
    return unauthorized(`the token is not valid before ${isoSeconds(nbf as number)}: check the clocks`);
  if (iat !== undefined && nowSeconds + LEEWAY_SECONDS < (iat as number))
    return unauthorized(`the token was issued in the future (${isoSeconds(iat as number)}): check the clocks`);
  return { ok: true, claims };
}
