// CI jobs that prove who they are with an OpenID Connect ID token ([[trust]] in the configuration):
// verified against a local issuer on loopback (RSA and EC keys, a discovery document, a JWKS that
// rotates), mapped onto rights and locks, recorded with who ran them and a link to the run; an
// issuer that cannot be reached opens nothing and stops nothing. Against the binary; runs on
// PostgreSQL too (make test-postgres).
import { afterEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { configFile, type Daemon, daemonsPerTest, freePort, freshDb, runBinary, tempDir, until } from "./daemon.ts";
import { type Issuer, startIssuer } from "./issuer.ts";

const startDaemon = daemonsPerTest();
const AUDIENCE = "https://releases.test";
const OPS = "ops-token-0123456789abcdef";
const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });
const now = () => Math.floor(Date.now() / 1000);

const issuers: Issuer[] = [];
afterEach(() => {
  for (const i of issuers.splice(0)) i.stop();
});
async function issuer(): Promise<Issuer> {
  const i = await startIssuer();
  issuers.push(i);
  await i.addKey("RS256");
  await i.addKey("ES256");
  return i;
}

/** What GitHub Actions puts in a job's token (the claims this daemon maps), for acme/shop's main branch. */
const github = (iss: string, more: Record<string, unknown> = {}) => ({
  iss,
  aud: AUDIENCE,
  sub: "repo:acme/shop:ref:refs/heads/main",
  repository: "acme/shop",
  repository_owner: "acme",
  ref: "refs/heads/main",
  ref_name: "main",
  actor: "ana",
  workflow: "deploy",
  run_id: "4242",
  iat: now(),
  nbf: now(),
  exp: now() + 300,
  ...more,
});

const trust = (iss: string, claims: string, rest = 'can = ["release"]\nlocks = ["prod"]') =>
  `[[trust]]\nissuer = "${iss}"\naudience = "${AUDIENCE}"\nwho = "{repository}@{ref_name} by {actor}"\n${rest}\n[trust.claims]\n${claims}\n`;
const opsToken = `[[token]]\nwho = "ops"\ncan = ["release", "block"]\nlocks = ["*"]\nsha256 = "${sha(OPS)}"\n`;

async function daemonWith(text: string, env: Record<string, string> = {}) {
  const file = configFile(text);
  return { d: await startDaemon({ RS_DB: await freshDb(), RS_CONFIG: file, ...env }), file };
}
const answerOf = async (res: Response) => ({
  status: res.status,
  body: await res.text(),
  code: res.headers.get("x-reason-code"),
  reason: decodeURIComponent(res.headers.get("x-reason") ?? ""),
});

describe("a CI job's verified ID token gets the rights and locks of the [[trust]] it matches", () => {
  test("RS256 and ES256 tokens start on the table's locks and nowhere else; history says who ran it, with the run's link", async () => {
    const i = await issuer();
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"\nref = "refs/heads/main"'));
    const [rsa, ec] = [await i.sign(github(i.url)), await i.sign(github(i.url), { kid: "es256-2" })];
    expect((await answerOf(await d.get("/locks/prod/start", as(rsa)))).body).toBe("1\n");
    expect((await answerOf(await d.get("/locks/prod/stop", as(ec)))).body).toBe("1\n");
    const elsewhere = await answerOf(await d.get("/locks/staging/start", as(rsa)));
    expect([elsewhere.status, elsewhere.code]).toEqual([403, "forbidden"]);
    expect(elsewhere.reason).toContain("acme/shop@main by ana");
    expect((await answerOf(await d.get("/locks/prod/block", as(rsa)))).status).toBe(403);
    const run = `${i.url}/acme/shop/actions/runs/4242`;
    const { events } = await (await d.get("/history?format=json")).json();
    const started = events.find((e: { kind: string }) => e.kind === "started");
    expect(started.by).toBe(`acme/shop@main by ana <${run}>`);
    expect(started.run).toBe(run);
    expect(started.message).toContain(`started by acme/shop@main by ana <${run}>`);
  });

  test("/status shows the job and its run while it holds the release", async () => {
    const i = await issuer();
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"'));
    expect(await d.body("/locks/prod/start?reason=v1", as(await i.sign(github(i.url))))).toBe("1\n");
    const status = await (await d.get("/locks/prod/status?format=json")).json();
    expect(status.release.by).toStartWith("acme/shop@main by ana <");
    expect(status.release.run).toBe(`${i.url}/acme/shop/actions/runs/4242`);
  });
});

describe('a [[trust]] with locks = ["*"] reaches every lock and the root', () => {
  test("its jobs may block all releases with /block", async () => {
    const i = await issuer();
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"', 'can = ["block"]\nlocks = ["*"]'));
    expect(await d.body("/block?reason=incident", as(await i.sign(github(i.url))))).toBe("1\n");
  });
});

describe("every claim condition of a [[trust]] must hold", () => {
  const cases: [string, Record<string, unknown>, boolean][] = [
    ["the exact value", {}, true],
    ["another value", { ref: "refs/heads/dev" }, false],
    ["a value the * glob takes", { repository: "acme/shop-eu" }, true],
    ["a value the glob does not take", { repository: "other/shop" }, false],
    ["no such claim", { environment: undefined }, false],
    ["one value of a list", { environment: "staging" }, true],
  ];
  for (const [what, claims, allowed] of cases)
    test(`${what}: ${allowed ? "let in" : "403, naming the claims that did not match, never the token"}`, async () => {
      const i = await issuer();
      const conditions = 'repository = "acme/shop*"\nref = "refs/heads/main"\nenvironment = ["production", "staging"]';
      const { d } = await daemonWith(trust(i.url, conditions));
      const token = await i.sign(github(i.url, { environment: "production", ...claims }));
      const res = await answerOf(await d.get("/locks/prod/start", as(token)));
      if (allowed) return expect(res.body).toBe("1\n");
      expect([res.status, res.code, res.body]).toEqual([403, "forbidden", "0\n"]);
      const name = Object.keys(claims)[0] as string;
      expect(res.reason).toContain(`${name} = `);
      expect(res.reason).not.toContain(token.split(".")[1] as string);
    });
});

describe("a token that does not verify opens nothing: 401 with what was wrong", () => {
  const forged: [string, (i: Issuer) => Promise<string>, string][] = [
    ["expired beyond the 60 s leeway", (i) => i.sign(github(i.url, { exp: now() - 120 })), "expired"],
    ["not yet valid", (i) => i.sign(github(i.url, { nbf: now() + 600 })), "not valid before"],
    ["issued in the future", (i) => i.sign(github(i.url, { iat: now() + 600 })), "issued in the future"],
    ["without exp", (i) => i.sign(github(i.url, { exp: undefined })), "no exp"],
    ["from another issuer", (i) => i.sign(github("https://evil.example")), "issuer"],
    ["for another audience", (i) => i.sign(github(i.url, { aud: "https://other.example" })), "audience"],
    [
      "alg none",
      async (i) => {
        const [h, p] = (await i.sign(github(i.url))).split(".");
        const none = Buffer.from(
          JSON.stringify({ ...JSON.parse(Buffer.from(h as string, "base64url").toString()), alg: "none" }),
        );
        return `${none.toString("base64url")}.${p}.`;
      },
      "alg",
    ],
    ["HS256 signed with the issuer's public key as secret", (i) => i.hmacWithPublicKey(github(i.url)), "alg HS256"],
    [
      "a payload changed after signing",
      async (i) => {
        const [h, , s] = (await i.sign(github(i.url))).split(".");
        const changed = Buffer.from(
          JSON.stringify(github(i.url, { repository: "acme/shop", ref: "refs/heads/main", actor: "eve" })),
        );
        return `${h}.${changed.toString("base64url")}.${s}`;
      },
      "signature does not verify",
    ],
    [
      "an RSA key's token claiming ES256",
      (i) => i.sign(github(i.url), { header: { alg: "ES256" } }),
      "signs with RS256",
    ],
  ];
  for (const [what, make, words] of forged)
    test(what, async () => {
      const i = await issuer();
      const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"'));
      const res = await answerOf(await d.get("/locks/prod/start", as(await make(i))));
      expect([res.status, res.code, res.body]).toEqual([401, "unauthorized", "0\n"]);
      expect(res.reason).toContain(words);
      expect((await (await d.get("/locks/prod/status?format=json")).json()).running).toBe(false);
    });

  test("a token expired within the 60 s leeway is still taken", async () => {
    const i = await issuer();
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"'));
    expect(await d.body("/locks/prod/start", as(await i.sign(github(i.url, { exp: now() - 20 }))))).toBe("1\n");
  });
});

describe("keys: chosen by kid, fetched again for an unknown kid at most once a minute", () => {
  test("a rotated key is fetched once; a kid still unknown right after is refused without fetching again", async () => {
    const i = await issuer();
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"'));
    expect(await d.body("/locks/prod/start", as(await i.sign(github(i.url))))).toBe("1\n");
    const fetched = i.jwksFetches();
    const rotated = await i.addKey("ES256"); // published from now on
    i.publish([rotated]);
    expect(await d.body("/locks/prod/stop", as(await i.sign(github(i.url), { kid: rotated })))).toBe("1\n");
    expect(i.jwksFetches()).toBe(fetched + 1);
    const unknown = await i.addKey("RS256");
    i.publish([rotated]); // made, never published
    const res = await answerOf(await d.get("/locks/prod/start", as(await i.sign(github(i.url), { kid: unknown }))));
    expect([res.status, res.code]).toEqual([401, "unauthorized"]);
    expect(res.reason).toContain("at most once a minute");
    expect(i.jwksFetches()).toBe(fetched + 1);
  });

  test("keys from a jwks_file, for a site that cannot reach the issuer", async () => {
    const i = await issuer();
    const keys = join(tempDir(), "jwks.json");
    writeFileSync(keys, JSON.stringify(i.jwks()));
    const { d } = await daemonWith(
      trust(i.url, 'repository = "acme/shop"').replace("[trust.claims]", `jwks_file = "${keys}"\n[trust.claims]`),
    );
    i.stop();
    expect(await d.body("/locks/prod/start", as(await i.sign(github(i.url), { kid: "es256-2" })))).toBe("1\n");
  });
});

describe("a token matching several [[trust]] tables holds each one's rights on that one's locks", () => {
  test("release on staging from one table and block on prod from another: no release on prod", async () => {
    const i = await issuer();
    const tables =
      trust(i.url, 'repository = "acme/shop"', 'can = ["release"]\nlocks = ["staging"]') +
      trust(i.url, 'environment = "production"', 'can = ["block"]\nlocks = ["prod"]');
    const { d } = await daemonWith(tables);
    const both = await i.sign(github(i.url, { environment: "production" }));
    const one = await i.sign(github(i.url));
    expect((await answerOf(await d.get("/locks/prod/start", as(both)))).status).toBe(403);
    expect(await d.body("/locks/staging/start", as(both))).toBe("1\n");
    expect(await d.body("/locks/prod/block", as(both))).toBe("1\n");
    expect((await answerOf(await d.get("/locks/prod/unblock", as(one)))).status).toBe(403);
  });
});

describe("an issuer that cannot be reached opens nothing and stops nothing", () => {
  test("down at start-up: the daemon starts, named tokens work, the job's token is 503 with words", async () => {
    const port = freePort();
    const iss = `http://127.0.0.1:${port}`;
    const { d } = await daemonWith(opsToken + trust(iss, 'repository = "acme/shop"'));
    expect(await d.body("/healthz")).toBe("ok\n");
    expect(await d.body("/locks/staging/start", as(OPS))).toBe("1\n");
    const i = await issuer(); // keys to sign with; not listening where the daemon looks
    const res = await answerOf(await d.get("/locks/prod/start", as(await i.sign(github(iss)))));
    expect([res.status, res.code, res.body]).toEqual([503, "issuer-unreachable", "0\n"]);
    expect(res.reason).toContain(`the keys of ${iss} cannot be had`);
    await until(async () => d.output().includes(`cannot fetch the keys of ${iss}`), "the start-up warning");
  });

  test("down mid-run: once its keys are stale, its jobs get 503, and named tokens still work", async () => {
    const i = await issuer();
    i.cacheSeconds(1);
    const { d } = await daemonWith(opsToken + trust(i.url, 'repository = "acme/shop"'));
    expect(await d.body("/locks/prod/start", as(await i.sign(github(i.url))))).toBe("1\n");
    i.stop();
    const token = await i.sign(github(i.url));
    // A stop of another release id changes nothing while the job is let in (wrong-id), and shows when it is not.
    await until(
      async () => (await d.get("/locks/prod/stop?id=99", as(token))).status === 503,
      "the job's token to be 503",
    );
    const res = await answerOf(await d.get("/locks/prod/stop?id=99", as(token)));
    expect(res.code).toBe("issuer-unreachable");
    expect(await d.body("/locks/prod/stop", as(OPS))).toBe("1\n");
  });
});

describe("[[trust]] in the configuration: checked, reloaded on SIGHUP", () => {
  const bad: [string, (iss: string) => string, string][] = [
    ["an http issuer off loopback", () => trust("http://ci.example", 'repository = "a/b"'), "is not https"],
    ["no audience", (iss) => trust(iss, 'repository = "a/b"').replace(/audience = .*\n/, ""), "audience is missing"],
    ["no claims", (iss) => trust(iss, "").replace("[trust.claims]\n", ""), "claims is missing"],
    ["only * in the claims", (iss) => trust(iss, 'repository = "*"'), "not only *"],
    ["a pattern any value fits (*/*)", (iss) => trust(iss, 'repository = "*/*"'), "narrows who is let in"],
    ["only the audience as a condition", (iss) => trust(iss, 'aud = "rs"'), "narrows who is let in"],
    ["only the issuer and a time", (iss) => trust(iss, `iss = "${iss}"\nexp = "1*"`), "narrows who is let in"],
    [
      "a bad right",
      (iss) => trust(iss, 'repository = "a/b"', 'can = ["deploy"]\nlocks = ["prod"]'),
      'can = ["deploy"] is not valid: "deploy" is not a right',
    ],
    [
      "an unknown key",
      (iss) => trust(iss, 'repository = "a/b"', 'can = ["release"]\nlocks = ["prod"]\nsubject = "x"'),
      "subject is not a trust setting",
    ],
  ];
  for (const [what, text, words] of bad)
    test(`check-config refuses ${what} with the file, the line and the problem`, async () => {
      const file = configFile(text("http://127.0.0.1:9"));
      const result = await runBinary(["check-config", file]);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(`${file}:`);
      expect(result.stderr).toContain(words);
    });

  test("check-config --online fetches each issuer's discovery document and keys and prints them", async () => {
    const i = await issuer();
    const file = configFile(trust(i.url, 'repository = "acme/shop"'));
    const offline = await runBinary(["check-config", file]);
    expect(offline.code).toBe(0);
    expect(offline.stdout).toContain(`trust: 1\n  ${i.url} for repository = acme/shop`);
    const online = await runBinary(["check-config", "--online", file]);
    expect(online.stdout).toContain(`keys of ${i.url}: rs256-1 (RS256), es256-2 (ES256)`);
    expect(online.code).toBe(0);
    i.stop();
    const down = await runBinary(["check-config", "--online", file]);
    expect(down.code).toBe(1);
    expect(down.stdout).toContain(`cannot fetch the keys of ${i.url}`);
  });

  test("SIGHUP: a table removed lets its jobs in no more; one added lets them in", async () => {
    const i = await issuer();
    const { d, file } = await daemonWith(opsToken + trust(i.url, 'repository = "acme/shop"'));
    const token = await i.sign(github(i.url));
    expect(await d.body("/locks/prod/start", as(token))).toBe("1\n");
    writeFileSync(file, opsToken);
    d.proc.kill("SIGHUP");
    await until(async () => d.output().includes("trust removed:"), "the reload");
    expect((await d.get("/locks/prod/stop", as(token))).status).toBe(401);
    writeFileSync(file, opsToken + trust(i.url, 'repository = "acme/shop"'));
    d.proc.kill("SIGHUP");
    await until(async () => d.output().includes("trust added:"), "the second reload");
    expect(await d.body("/locks/prod/stop", as(token))).toBe("1\n");
  });
});

describe("releasestatus run --oidc picks up the job's token by itself", () => {
  test("GitHub Actions: the token is asked for with the request URL and token, for the audience", async () => {
    const i = await issuer();
    i.githubRequest.claims = github(i.url);
    const { d } = await daemonWith(trust(i.url, 'repository = "acme/shop"'));
    const out = join(tempDir(), "ran");
    const result = await runBinary(
      [
        "run",
        "--oidc",
        "github",
        "--audience",
        AUDIENCE,
        "--lock",
        "prod",
        "--",
        "sh",
        "-c",
        `echo "$RS_RELEASE_ID" > ${out}`,
      ],
      {
        RS_URL: d.url,
        ACTIONS_ID_TOKEN_REQUEST_URL: i.githubRequest.url,
        ACTIONS_ID_TOKEN_REQUEST_TOKEN: i.githubRequest.token,
      },
    );
    expect(result.stderr).toMatch(/^releasestatus run: gave back release #1 after \d+s\n$/); // and no other word
    expect(result.code).toBe(0);
    expect(await Bun.file(out).text()).toBe("1\n");
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.map((e: { by: string }) => e.by)).toContain(
      `acme/shop@main by ana <${i.url}/acme/shop/actions/runs/4242>`,
    );
  });

  const missing: [string, string, string][] = [
    ["github", "ACTIONS_ID_TOKEN_REQUEST_URL", "id-token: write"],
    ["gitlab", "RS_ID_TOKEN", "id_tokens"],
    ["circleci", "CIRCLE_OIDC_TOKEN_V2", "context"],
    ["buildkite", "buildkite-agent", "buildkite-agent"],
  ];
  for (const [ci, what, hint] of missing)
    test(`${ci}: without ${what}, exit 64 saying what to set, and nothing is asked of the server`, async () => {
      const result = await runBinary(["run", "--oidc", ci, "--audience", AUDIENCE, "--", "true"], {
        RS_URL: "http://127.0.0.1:9",
      });
      expect(result.code).toBe(64);
      expect(result.stderr).toContain(what);
      expect(result.stderr).toContain(hint);
    });

  test("--oidc without --audience, or an unknown CI, is a usage error", async () => {
    for (const args of [
      ["--oidc", "github"],
      ["--oidc", "jenkins", "--audience", AUDIENCE],
    ]) {
      const result = await runBinary(["run", ...args, "--", "true"]);
      expect(result.code).toBe(64);
      expect(result.stderr).toMatch(/--audience|github, gitlab, circleci or buildkite/);
    }
  });
});

export type { Daemon };
