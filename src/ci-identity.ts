// `releasestatus run --oidc CI --audience AUD`: the job's OpenID Connect ID token, picked up where each
// CI system hands it over, so a pipeline needs no stored releasestatus token. GitHub Actions answers a
// request to ACTIONS_ID_TOKEN_REQUEST_URL (the job needs `permissions: id-token: write`); GitLab puts
// the token its `id_tokens:` names in the environment (here RS_ID_TOKEN); CircleCI's `circleci` CLI
// makes one for an audience, else $CIRCLE_OIDC_TOKEN_V2 (in jobs with a context); Buildkite's agent
// makes one with `buildkite-agent oidc request-token`.

export const CIS = ["github", "gitlab", "circleci", "buildkite"] as const;
export type Ci = (typeof CIS)[number];

/** The job cannot have a token as asked: the message says what to set. */
export class NoJobToken extends Error {}

type Env = Record<string, string | undefined>;

/** A token from this job's CI for `audience`; NoJobToken in words when the job has none. */
export async function jobToken(ci: Ci, audience: string, env: Env = process.env): Promise<string> {
  if (ci === "github") return fromGithub(audience, env);
  if (ci === "gitlab") return forAudience(env.RS_ID_TOKEN, "RS_ID_TOKEN", audience, GITLAB_HINT(audience));
  if (ci === "circleci") {
    // The CLI can ask for our audience; the variable carries the organization's id as its audience.
    if (Bun.which("circleci", { PATH: env.PATH ?? "" }))
      return command(["circleci", "run", "oidc", "get", "--claims", JSON.stringify({ aud: audience })], env);
    return forAudience(env.CIRCLE_OIDC_TOKEN_V2, "CIRCLE_OIDC_TOKEN_V2", audience, CIRCLECI_HINT);
  }
  if (!Bun.which("buildkite-agent", { PATH: env.PATH ?? "" }))
    throw new NoJobToken(
      "buildkite-agent is not on the PATH: run this in a Buildkite job, whose agent makes the token",
    );
  return command(["buildkite-agent", "oidc", "request-token", "--audience", audience], env);
}

const GITLAB_HINT = (audience: string) =>
  `declare it in the job's id_tokens: (id_tokens: { RS_ID_TOKEN: { aud: "${audience}" } })`;
const CIRCLECI_HINT =
  "CircleCI gives it to jobs that use a context; or install the circleci CLI, which asks for the audience";

async function fromGithub(audience: string, env: Env): Promise<string> {
  const url = env.ACTIONS_ID_TOKEN_REQUEST_URL;
  const token = env.ACTIONS_ID_TOKEN_REQUEST_TOKEN;
  if (!url || !token)
    throw new NoJobToken(
      "ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: give the job `permissions: id-token: write`",
    );
  const ask = `${url}${url.includes("?") ? "&" : "?"}audience=${encodeURIComponent(audience)}`;
  let value: unknown;
  try {
    const res = await fetch(ask, {
      headers: { Authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(10_000),
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    value = ((await res.json()) as { value?: unknown }).value;
  } catch (e) {
    throw new NoJobToken(
      `GitHub did not give an ID token (${(e as Error).message}): check the job's id-token permission`,
    );
  }
  if (typeof value !== "string" || value === "") throw new NoJobToken("GitHub's answer holds no ID token (no value)");
  return value;
}

// A token handed over in the environment: it must be there, and be for our audience (the job chose it).
function forAudience(token: string | undefined, name: string, audience: string, hint: string): string {
  if (!token) throw new NoJobToken(`${name} is not set: ${hint}`);
  const aud = claimsOf(token)?.aud;
  const auds = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
  if (!auds.includes(audience))
    throw new NoJobToken(`the token in ${name} is for the audience ${JSON.stringify(aud)}, not ${audience}: ${hint}`);
  return token;
}

async function command(argv: string[], env: Env): Promise<string> {
  const proc = Bun.spawn(argv, { env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const token = out.trim();
  if (code !== 0 || !token)
    throw new NoJobToken(
      `${argv.slice(0, 4).join(" ")} did not give a token (exit ${code}): ${err.trim().slice(0, 300)}`,
    );
  return token;
}

/** The claims of a token, unverified: only to read when it expires, or which audience it is for. */
export function claimsOf(token: string): Record<string, unknown> | null {
  try {
    return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
  } catch {
    return null;
  }
}

/**
 * Keeps `headers` holding a fresh token while a long deploy runs: a new one is asked for when two thirds
 * of the current one's life are gone (GitHub's last minutes). Tokens handed over in the environment
 * cannot be renewed and are left as they are. The returned function stops it.
 */
export function keepFresh(ci: Ci, audience: string, headers: Record<string, string>, token: string): () => void {
  if (ci === "gitlab" || (ci === "circleci" && !Bun.which("circleci"))) return () => {};
  let timer: ReturnType<typeof setTimeout> | undefined;
  const schedule = (current: string) => {
    const exp = Number(claimsOf(current)?.exp);
    const life = Number.isFinite(exp) ? exp * 1000 - Date.now() : 0;
    timer = setTimeout(renew, Math.max(10_000, (life * 2) / 3));
    timer.unref();
  };
  const renew = () =>
    jobToken(ci, audience).then(
      (fresh) => {
        headers.Authorization = `Bearer ${fresh}`;
        schedule(fresh);
      },
      () => schedule(""), // tried again in 10 s; the old token serves until it expires
    );
  schedule(token);
  return () => clearTimeout(timer);
}
