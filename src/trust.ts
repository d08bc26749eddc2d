// [[trust]]: CI jobs that prove who they are with an OpenID Connect ID token instead of a stored
// secret. Each table names an issuer, the audience its tokens must be for, the claims they must
// carry (exact values or * globs), and what such a job may do (can, locks, as a [[token]]). A token
// that several tables accept holds each one's rights on that one's locks. History records who ran
// the job (the `who` template over the claims) and, where the claims give one, a link to the run.
import type { Grant, Right, Token } from "./access.ts";
import { type Claims, issuerProblem, type KeySource, signingKeys, verify } from "./oidc.ts";
import { type Refusal, refuse } from "./release.ts";
import { visible } from "./visible.ts";

export type Trust = {
  issuer: string; // the exact iss
  audience: string; // aud must contain it
  jwks: JsonWebKey[] | null; // from jwks_file, for sites that cannot reach the issuer; null: discovered
  jwksFile: string | null;
  who: string; // a template over claims: "{repository}@{ref_name} by {actor}"
  can: ReadonlySet<Right>;
  locks: readonly string[] | "*";
  claims: readonly Condition[];
};
/** A claim the token must carry, with a value matching one of the patterns. */
export type Condition = { claim: string; patterns: readonly string[] };

export const TRUST_KEYS = ["issuer", "audience", "jwks_file", "who", "can", "locks", "claims"];
const DEFAULT_WHO = "{sub}";
const MAX_WHO = 200;

/** What parseTrust needs from the configuration file's reader: the shared checks of can and locks, a file reader. */
export type TrustReading = {
  rights: (can: unknown) => ReadonlySet<Right> | null;
  scope: (locks: unknown) => readonly string[] | "*" | null;
  problems: { can: (can: unknown) => string; locks: (locks: unknown) => string };
  readFile: (path: string) => string | { code: string };
};

/** One [[trust]] table checked; a problem is a string that starts with the key it is about. */
export function parseTrust(t: Record<string, unknown>, read: TrustReading): Trust | string {
  for (const key of Object.keys(t))
    if (!TRUST_KEYS.includes(key)) return `${key} is not a trust setting: expected ${TRUST_KEYS.join(", ")}`;
  const { issuer, audience, who = DEFAULT_WHO, claims, jwks_file: jwksFile } = t;
  if (typeof issuer !== "string")
    return "issuer is missing: the exact iss of the tokens, e.g. https://token.actions.githubusercontent.com";
  const bad = issuerProblem(issuer);
  if (bad) return `issuer = ${JSON.stringify(issuer)} ${bad}: expected an https URL, exactly as the tokens' iss`;
  if (typeof audience !== "string" || audience === "" || visible(audience) !== audience)
    return "audience is missing or empty: the aud this daemon's tokens are asked for (e.g. its URL), which the job must request";
  if (typeof who !== "string" || !/^([^{}]|\{[^{}]+\})+$/.test(who))
    return `who = ${JSON.stringify(who)} is not valid: expected text with claims in braces, e.g. "{repository}@{ref} by {actor}"`;
  const can = read.rights(t.can);
  if (can === null) return read.problems.can(t.can);
  const locks = read.scope(t.locks);
  if (locks === null) return read.problems.locks(t.locks);
  const conditions = parseConditions(claims);
  if (typeof conditions === "string") return conditions;
  let jwks: JsonWebKey[] | null = null;
  if (jwksFile !== undefined) {
    if (typeof jwksFile !== "string" || jwksFile === "")
      return "jwks_file is not valid: expected the path of a JWKS file";
    const text = read.readFile(jwksFile);
    if (typeof text !== "string")
      return `jwks_file = ${JSON.stringify(jwksFile)} cannot be read (${text.code}): check the path and that the daemon's user may read it`;
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch {
      return `jwks_file = ${JSON.stringify(jwksFile)} is not JSON: expected the issuer's JWKS ({"keys": [...]})`;
    }
    const keys = signingKeys(doc);
    if (typeof keys === "string" || keys.size === 0)
      return `jwks_file = ${JSON.stringify(jwksFile)} holds no RS256 or ES256 key with a kid${typeof keys === "string" ? `: ${keys}` : ""}`;
    jwks = [...keys.values()].map((k) => k.jwk);
  }
  return {
    issuer,
    audience,
    jwks,
    jwksFile: (jwksFile as string | undefined) ?? null,
    who,
    can,
    locks,
    claims: conditions,
  };
}

function parseConditions(claims: unknown): Condition[] | string {
  const example = '[trust.claims] with at least one claim, e.g. repository = "acme/shop"';
  if (typeof claims !== "object" || claims === null || Array.isArray(claims))
    return `claims is missing: without conditions every job of the issuer would be let in (on github.com, any repository can ask for any audience); add ${example}`;
  const conditions: Condition[] = [];
  for (const [claim, value] of Object.entries(claims)) {
    const patterns = typeof value === "string" ? [value] : value;
    if (!Array.isArray(patterns) || patterns.length === 0 || !patterns.every((p) => typeof p === "string" && p !== ""))
      return `claims: ${claim} = ${JSON.stringify(value)} is not valid: expected a value, or a list of values, each exact or with * for any characters`;
    conditions.push({ claim, patterns });
  }
  // At least one condition must actually narrow who is let in: not a claim every token of the issuer carries
  // alike or that is checked anyway (iss, aud, the times), and not a pattern that any value fits (*, */*).
  if (!conditions.some(narrows))
    return `claims: at least one condition must name a value that narrows who is let in (not only *, */* or iss, aud and the times): add ${example}`;
  return conditions;
}

const CHECKED_ANYWAY = new Set(["iss", "aud", "exp", "nbf", "iat", "jti"]);
const narrows = (c: Condition): boolean =>
  !CHECKED_ANYWAY.has(c.claim) && c.patterns.every((p) => /[\p{L}\p{N}]/u.test(p.replaceAll("*", "")));

/** `*` matches any characters, `/` too; everything else is itself. */
const globs = new Map<string, RegExp>();
function matches(pattern: string, value: string): boolean {
  let re = globs.get(pattern);
  if (!re) {
    re = new RegExp(`^${pattern.split("*").map(RegExp.escape).join(".*")}$`, "s");
    globs.set(pattern, re);
  }
  return re.test(value);
}

// A claim's values as text: a string, a number or a boolean is one; a list, each of its items.
function valuesOf(claim: unknown): string[] {
  const one = (v: unknown) =>
    typeof v === "string" || typeof v === "number" || typeof v === "boolean" ? [String(v)] : [];
  return Array.isArray(claim) ? claim.flatMap(one) : one(claim);
}

/** The conditions of a table the claims do not meet, in words: `ref = "refs/heads/main" (the token has "refs/heads/dev")`. */
function unmet(t: Trust, claims: Claims): string[] {
  return t.claims
    .filter((c) => !valuesOf(claims[c.claim]).some((v) => c.patterns.some((p) => matches(p, v))))
    .map((c) => {
      const had = claims[c.claim];
      const wanted = c.patterns.map((p) => JSON.stringify(p)).join(" or ");
      return `${c.claim} = ${wanted} (${had === undefined ? "the token has no such claim" : `the token has ${JSON.stringify(had)}`})`;
    });
}

const audiences = (aud: unknown): string[] =>
  typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud.filter((a) => typeof a === "string") : [];

/**
 * The token that verified claims stand for: who it is (the first matching table's template), the
 * grants of every matching table, and the run's link. A refusal in words when no table accepts them.
 */
export function tokenFromClaims(trust: readonly Trust[], claims: Claims): Token | Refusal {
  const ofIssuer = trust.filter((t) => t.issuer === claims.iss);
  if (ofIssuer.length === 0)
    return refuse(
      "unauthorized",
      `no [[trust]] names the issuer ${String(claims.iss)} any more (the configuration was reloaded)`,
    );
  const aud = audiences(claims.aud);
  const forUs = ofIssuer.filter((t) => aud.includes(t.audience));
  if (forUs.length === 0)
    return refuse(
      "unauthorized",
      `the token is for the audience ${JSON.stringify(aud)}, not one this daemon's [[trust]] for ${String(claims.iss)} expects (${[...new Set(ofIssuer.map((t) => JSON.stringify(t.audience)))].join(" or ")}): ask the CI for a token with that audience`,
    );
  const accepting = forUs.filter((t) => unmet(t, claims).length === 0);
  if (accepting.length === 0)
    return refuse(
      "forbidden",
      `no [[trust]] accepts this job: ${forUs.map((t) => `one for ${t.issuer} needs ${unmet(t, claims).join(", ")}`).join("; ")}`,
    );
  const first = accepting[0] as Trust;
  const who = render(first.who, claims);
  if (typeof who !== "string") return who;
  const grants: Grant[] = accepting.map((t) => ({ can: t.can, locks: t.locks }));
  const link = runLink(claims);
  return {
    who: link ? `${who} <${link}>` : who,
    can: new Set(grants.flatMap((g) => [...g.can])),
    locks: grants.some((g) => g.locks === "*") ? "*" : [...new Set(grants.flatMap((g) => g.locks as string[]))],
    sha256: "",
    named: true,
    grants,
  };
}

// The `who` template filled in. A claim's value may not hide characters or pass for a run link.
function render(template: string, claims: Claims): string | Refusal {
  let missing: string | null = null;
  const who = template.replace(/\{([^{}]+)\}/g, (_, name: string) => {
    const values = valuesOf(claims[name]);
    if (values.length === 0) missing ??= name;
    return values.join(",");
  });
  if (missing !== null)
    return refuse(
      "forbidden",
      `the [[trust]]'s who names the claim {${missing}}, which this token does not carry: change who in the configuration`,
    );
  if (who.length > MAX_WHO || visible(who) !== who || /[<>]/.test(who) || who.trim() === "")
    return refuse(
      "forbidden",
      `the job's name from the [[trust]]'s who is empty, longer than ${MAX_WHO} characters, or has invisible characters or < >: change who in the configuration`,
    );
  return who;
}

/**
 * A link to the CI run, from the claims that name one: GitHub Actions (repository and run_id, on
 * github.com for its issuer, else the issuer's own host), GitLab (project_path and pipeline_id under
 * the issuer, which is the instance), Buildkite (organization_slug, pipeline_slug and build_number).
 */
export function runLink(claims: Claims): string | null {
  const text = (name: string) => {
    const v = claims[name];
    return (typeof v === "string" && v !== "") || typeof v === "number" ? String(v) : null;
  };
  const path = (v: string) => v.split("/").map(encodeURIComponent).join("/");
  const iss = String(claims.iss);
  const [repository, runId] = [text("repository"), text("run_id")];
  if (repository && runId) {
    const server = iss === "https://token.actions.githubusercontent.com" ? "https://github.com" : new URL(iss).origin;
    return `${server}/${path(repository)}/actions/runs/${encodeURIComponent(runId)}`;
  }
  const [project, pipeline] = [text("project_path"), text("pipeline_id")];
  if (project && pipeline)
    return `${iss.replace(/\/$/, "")}/${path(project)}/-/pipelines/${encodeURIComponent(pipeline)}`;
  const [org, slug, build] = [text("organization_slug"), text("pipeline_slug"), text("build_number")];
  if (org && slug && build)
    return `https://buildkite.com/${encodeURIComponent(org)}/${encodeURIComponent(slug)}/builds/${encodeURIComponent(build)}`;
  return null;
}

/** The run link that a CI job's `by` ends with ("acme/shop by ana <https://…>"); null for any other `by`. */
export function runOf(by: string | undefined): string | null {
  return by ? (/ <(https?:\/\/[^<>\s]+)>$/.exec(by)?.[1] ?? null) : null;
}

/** Where each issuer's keys come from: one source per issuer (the configuration makes its tables agree). */
export const keySources = (trust: readonly Trust[]): KeySource[] => {
  const seen = new Map<string, KeySource>();
  for (const t of trust) if (!seen.has(t.issuer)) seen.set(t.issuer, { issuer: t.issuer, jwks: t.jwks });
  return [...seen.values()];
};

/** A CI job as its ID token showed it: the verified claims (null when it did not verify), and what they grant. */
export type Job = { claims: Claims | null; trust: readonly Trust[]; who: Token | Refusal };

/** A CI job's ID token, verified and mapped onto rights; a refusal in words (never quoting the token) otherwise. */
export async function identifyJob(trust: readonly Trust[], bearer: string): Promise<Job> {
  const verified = await verify(bearer, keySources(trust));
  if (!verified.ok) return { claims: null, trust, who: refuse(verified.reason, verified.message) };
  return { claims: verified.claims, trust, who: tokenFromClaims(trust, verified.claims) };
}

/** What a job may do under the configuration now: after a reload, its claims are matched against the new tables. */
export function jobUnder(job: Job, trust: readonly Trust[]): Token | Refusal {
  if (job.trust === trust || job.claims === null) return job.who;
  return tokenFromClaims(trust, job.claims);
}
