// Who may do what, on which locks: named tokens from the configuration file
// (RS_CONFIG), their rights and scopes, the `by` they record, reloading on
// SIGHUP, and the commands that check a file and make a token. Against the
// binary; runs on PostgreSQL too (make test-postgres).
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  configFile,
  type Daemon,
  daemonsPerTest,
  freshDb,
  historyKinds,
  runBinary,
  statusOf,
  tempDir,
  until,
} from "./daemon.ts";

const startDaemon = daemonsPerTest();
const daemon = async (env: Record<string, string> = {}) => startDaemon({ RS_DB: await freshDb(), ...env });
const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });

const ANA = "ana-token-0123456789abcdef"; // release on prod and staging
const BOB = "bob-token-0123456789abcdef"; // block on prod
const OPS = "ops-token-0123456789abcdef"; // everything, everywhere
const ADMIN = "the-rs-token-0123456789ab"; // RS_TOKEN

const tokenTable = (who: string, can: string[], locks: string[], token: string) =>
  `[[token]]\nwho = "${who}"\ncan = ${JSON.stringify(can)}\nlocks = ${JSON.stringify(locks)}\nsha256 = "${sha(token)}"\n`;
const TEAM = [
  tokenTable("ana", ["release"], ["prod", "staging"], ANA),
  tokenTable("bob", ["block"], ["prod"], BOB),
  tokenTable("ops", ["release", "block", "override"], ["*"], OPS),
].join("\n");
const WITHOUT_ANA = TEAM.split("\n\n")
  .filter((t) => !t.includes('"ana"'))
  .join("\n\n");
const queueOf = async (d: Daemon, lock: string) =>
  (await (await d.get(`/locks/${lock}/status?format=json`)).json()).queue as unknown[];

async function withTeam(extra = "", env: Record<string, string> = {}) {
  const file = configFile(`${extra}\n${TEAM}`);
  return { d: await daemon({ RS_CONFIG: file, ...env }), file };
}

async function reload(d: Daemon, file: string, text: string, expectLine: string) {
  const before = d.output().split(expectLine).length;
  writeFileSync(file, text);
  d.proc.kill("SIGHUP");
  await until(async () => d.output().split(expectLine).length > before, `the daemon to log "${expectLine}"`);
}

const answerOf = async (res: Response) => ({ status: res.status, body: await res.text() });

describe("a change needs a token whose rights and locks cover it", () => {
  test("each change endpoint: 401 without a known token, 403 forbidden without the right or the lock, 1 with both", async () => {
    const { d } = await withTeam();
    const cases: [string, string | null, number, string][] = [
      // path, token, HTTP status, body
      ["/locks/prod/start", null, 401, "0\n"],
      ["/locks/prod/start", "not-a-token", 401, "0\n"],
      ["/locks/prod/start", BOB, 403, "0\n"], // bob may block, not release
      ["/locks/dev/start", ANA, 403, "0\n"], // ana's locks are prod and staging
      ["/locks/production/start", ANA, 403, "0\n"], // a name that only begins like hers
      ["/start", ANA, 403, "0\n"], // the original's path is the default lock
      ["/locks/prod/eu/start", ANA, 200, "1\n"], // under prod
      ["/locks/prod/eu/renew?id=1&ttl=60", BOB, 403, "0\n"],
      ["/locks/prod/eu/renew?id=1&ttl=60", ANA, 200, "1\n"],
      ["/locks/prod/eu/stop", BOB, 403, "0\n"],
      ["/locks/prod/eu/stop", ANA, 200, "1\n"],
      ["/locks/prod/block", ANA, 403, "0\n"],
      ["/locks/staging/block", BOB, 403, "0\n"],
      ["/locks/prod/block", BOB, 200, "1\n"],
      ["/locks/prod/unblock", ANA, 403, "0\n"],
      ["/locks/prod/unblock", BOB, 200, "1\n"],
      ["/start", OPS, 200, "1\n"],
      ["/stop", OPS, 200, "1\n"],
    ];
    for (const [path, token, status, body] of cases) {
      const res = await d.get(path, token ? as(token) : {});
      expect({ path, token, ...(await answerOf(res)) }).toEqual({ path, token, status, body });
      if (status === 403) expect(res.headers.get("x-reason-code")).toBe("forbidden");
    }
  });

  test("a refusal names who may not do what, and changes nothing", async () => {
    const { d } = await withTeam();
    const res = await d.get("/locks/prod/eu/block?format=json", as(ANA));
    expect(res.status).toBe(403);
    const body = await res.json();
    expect(body.reason).toBe("forbidden");
    expect(body.message).toStartWith("ana may not block prod/eu");
    expect((await (await d.get("/locks/prod/eu/status?format=json")).json()).blocked).toBe(false);
    expect(await historyKinds(d)).toEqual([]);
  });

  test("the root (/block, /unblock) needs a token for every lock, even with the block right on each lock", async () => {
    const { d } = await withTeam();
    expect(await answerOf(await d.get("/block", as(BOB)))).toEqual({ status: 403, body: "0\n" });
    expect((await statusOf(d)).blocked).toBe(false);
    expect(await answerOf(await d.get("/block", as(OPS)))).toEqual({ status: 200, body: "1\n" });
    expect(await answerOf(await d.get("/unblock", as(BOB)))).toEqual({ status: 403, body: "0\n" });
    expect(await answerOf(await d.get("/unblock", as(OPS)))).toEqual({ status: 200, body: "1\n" });
  });

  test("RS_TOKEN still may do everything beside the file's tokens, and is recorded as token", async () => {
    const { d } = await withTeam("", { RS_TOKEN: ADMIN });
    expect(await d.body("/block", as(ADMIN))).toBe("1\n");
    expect(await d.body("/unblock", as(ADMIN))).toBe("1\n");
    expect(await d.body("/locks/prod/start?name=deployer", as(ADMIN))).toBe("1\n");
    const [started] = (await (await d.get("/history?format=json")).json()).events;
    expect(started).toMatchObject({ kind: "started", name: "deployer", by: "token" });
  });

  test("a copy of the database is only for a token for every lock", async () => {
    const { d } = await withTeam("", { RS_DB: join(tempDir(), "state.db") }); // PostgreSQL has no copy to give
    expect((await d.get("/backup")).status).toBe(401);
    expect((await d.get("/backup", as(ANA))).status).toBe(403);
    expect((await d.get("/backup", as(OPS))).status).toBe(200);
  });
});

describe("status JSON says what the asking token may do there, so the page offers only what can work", () => {
  test("a scoped token may release but not block on prod; from the root's block, only ops may lift it", async () => {
    const d = await daemon({ RS_CONFIG: configFile(TEAM) });
    await d.body("/block?name=ops&reason=holidays", as(OPS));
    const mayOf = async (token: string | null, lock: string) =>
      (await (await d.get(`/locks/${lock}/status?format=json`, token ? as(token) : {})).json()).may;
    expect(await mayOf(ANA, "prod/eu")).toEqual({
      start: true,
      stop: true,
      block: false,
      unblock: false,
      override: false,
      unblockAbove: false,
    });
    expect(await mayOf(BOB, "prod")).toMatchObject({ start: false, block: true, unblockAbove: false });
    expect(await mayOf(OPS, "prod")).toMatchObject({ start: true, block: true, override: true, unblockAbove: true });
    expect(await mayOf(ANA, "qa")).toMatchObject({ start: false, stop: false });
    // Without a token nothing is known of rights: the page offers the buttons and asks for one.
    expect(await mayOf(null, "prod")).toBeUndefined();
  });
});

describe("every event records whose token made it (by) beside the name the request gave", () => {
  test("with a named token, by is the token's who and the name defaults to it", async () => {
    const { d } = await withTeam();
    expect(await d.body("/locks/prod/start?name=sion&reason=v2", as(ANA))).toBe("1\n");
    const status = await (await d.get("/locks/prod/status?format=json")).json();
    expect(status.release).toMatchObject({ name: "sion", by: "ana" });
    expect(await d.body("/locks/prod/status")).toContain("release #1 by sion (v2) on prod, started by ana,");
    expect(await d.body("/locks/prod/stop", as(OPS))).toBe("1\n");
    expect(await d.body("/locks/staging/block", as(OPS))).toBe("1\n");
    const events = (await (await d.get("/history?format=json")).json()).events;
    expect(events.map((e: Record<string, unknown>) => [e.kind, e.name, e.by])).toEqual([
      ["blocked", "ops", "ops"],
      ["stopped", "ops", "ops"],
      ["started", "sion", "ana"],
    ]);
    expect(events[2].message).toBe("release #1 on prod by sion, started by ana: v2");
    expect(await d.body("/history")).toContain("release #1 on prod by sion, started by ana: v2");
  });

  test("the live event stream carries by", async () => {
    const { d } = await withTeam();
    const res = await d.get("/locks/prod/events");
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let seen = "";
    const heard = (async () => {
      while (!seen.includes("event: change")) seen += decoder.decode((await reader.read()).value, { stream: true });
    })();
    await until(async () => seen.includes("event: status"), "the stream's first status");
    expect(await d.body("/locks/prod/start?name=sion", as(ANA))).toBe("1\n");
    await heard;
    await reader.cancel();
    expect(seen).toContain('"name":"sion","reason":"","by":"ana"');
  });

  test("without tokens nothing changes: by is absent", async () => {
    const d = await daemon();
    expect(await d.body("/start?name=sion")).toBe("1\n");
    const [started] = (await (await d.get("/history?format=json")).json()).events;
    expect(started).not.toHaveProperty("by");
    expect((await statusOf(d)).release).not.toHaveProperty("by");
  });

  test("by survives a restart", async () => {
    const db = await freshDb();
    const { d, file } = await withTeam("", { RS_DB: db });
    expect(await d.body("/locks/prod/start?name=sion", as(ANA))).toBe("1\n");
    expect(await d.stop()).toBe(0);
    const again = await daemon({ RS_CONFIG: file, RS_DB: db });
    expect((await (await again.get("/locks/prod/status?format=json")).json()).release).toMatchObject({
      name: "sion",
      by: "ana",
    });
    const [started] = (await (await again.get("/history?format=json")).json()).events;
    expect(started).toMatchObject({ kind: "started", name: "sion", by: "ana" });
  });
});

describe("a token never travels in the URL", () => {
  test("token= or access_token= is refused with 400 on every endpoint, before anything changes", async () => {
    const { d } = await withTeam();
    for (const path of [
      `/locks/prod/start?token=${ANA}`,
      `/locks/prod/start?access_token=${ANA}`,
      "/start?access%5Ftoken=x",
      "/status?token",
      "/history?token=",
      "/locks?limit=1&token=x",
      "/metrics?token=x",
    ]) {
      const res = await d.get(path, as(ANA));
      expect({ path, ...(await answerOf(res)) }).toEqual({ path, status: 400, body: "0\n" });
      expect(res.headers.get("x-reason")).toContain("Authorization header");
    }
    const posted = await d.get("/locks/prod/start", {
      method: "POST",
      headers: { ...as(ANA).headers, "Content-Type": "application/x-www-form-urlencoded" },
      body: `name=x&token=${ANA}`,
    });
    expect(posted.status).toBe(400);
    expect(await historyKinds(d)).toEqual([]);
  });
});

describe('read = "token" closes every read but /healthz', () => {
  test("status, history, events, locks and metrics need a valid token; /healthz and the page's HTML do not", async () => {
    const { d } = await withTeam('read = "token"');
    for (const path of [
      "/status",
      "/history",
      "/events",
      "/locks",
      "/metrics",
      "/locks/prod/status",
      "/locks/prod/history",
      "/locks/prod/events",
    ]) {
      expect({ path, status: (await d.get(path)).status }).toEqual({ path, status: 401 });
      expect({ path, status: (await d.get(path, as("wrong"))).status }).toEqual({ path, status: 401 });
      const res = await d.get(path, { ...as(BOB), method: "HEAD" });
      expect({ path, status: res.status }).toEqual({ path, status: 200 });
    }
    expect((await d.get("/healthz")).status).toBe(200);
    expect((await d.get("/")).status).toBe(200); // the page holds no state; it asks for the token to read
  });
});

describe("reloading on SIGHUP", () => {
  test("a revoked token is refused at once, while the release it started keeps running and its waiter keeps waiting", async () => {
    const { d, file } = await withTeam();
    expect(await d.body("/locks/prod/start?name=ana", as(ANA))).toBe("1\n");
    const waiter = d.body("/locks/prod/start?name=ops&wait=30", as(OPS));
    await until(async () => (await queueOf(d, "prod")).length === 1, "the waiter in line");
    await reload(d, file, WITHOUT_ANA, "configuration reloaded");
    expect(d.output()).toContain("token removed: ana (release on prod, staging)");
    expect(d.output()).not.toContain(sha(ANA));
    const status = await (await d.get("/locks/prod/status?format=json")).json();
    expect(status.release).toMatchObject({ id: 1, by: "ana" });
    expect(status.queue).toHaveLength(1);
    expect(await answerOf(await d.get("/locks/prod/stop", as(ANA)))).toEqual({ status: 401, body: "0\n" });
    expect(await d.body("/locks/prod/stop", as(OPS))).toBe("1\n");
    expect(await waiter).toBe("1\n");
  });

  test("a new token works at once", async () => {
    const { d, file } = await withTeam();
    const NEW = "new-token-0123456789abcdef";
    expect((await d.get("/locks/dev/start", as(NEW))).status).toBe(401);
    await reload(d, file, `${TEAM}\n${tokenTable("cy", ["release"], ["dev"], NEW)}`, "configuration reloaded");
    expect(d.output()).toContain("token added: cy (release on dev)");
    expect(await d.body("/locks/dev/start", as(NEW))).toBe("1\n");
  });

  test("an invalid file is refused: the running configuration stays and /healthz stays 200", async () => {
    const { d, file } = await withTeam();
    await reload(d, file, `${TEAM}\n[[token]]\nwho = "x"\n`, "was not reloaded");
    expect(d.output()).toMatch(/the running one stays: .*releasestatus\.toml:\d+: this \[\[token\]\] has no can/);
    expect((await d.get("/healthz")).status).toBe(200);
    expect(await d.body("/locks/prod/start", as(ANA))).toBe("1\n");
    await reload(d, file, "port = [", "was not reloaded");
    expect(await d.body("/locks/prod/stop", as(ANA))).toBe("1\n");
  });

  test("a setting that needs a restart is said so, and the rest takes effect", async () => {
    const { d, file } = await withTeam();
    await reload(d, file, `history_limit = 5\nmax_wait = 5\n${TEAM}`, "configuration reloaded");
    expect(d.output()).toContain("take effect only on a restart: historyLimit (10000 → 5)");
    expect(await d.body("/locks/prod/start", as(ANA))).toBe("1\n");
    expect((await d.get("/locks/prod/start?wait=6", as(OPS))).status).toBe(400); // max_wait is now 5
  });
});

describe("the configuration file is checked whole at start-up", () => {
  const BAD: [string, string, RegExp][] = [
    ["broken TOML", 'read = "open"\n\nport = [1,\n', /:3: not valid TOML/],
    ["an unknown key", "portt = 8080\n", /:1: portt is not a setting/],
    ["a plain token", 'token = "s3cret"\n', /:1: token must be a list of tables/],
    [
      "a key a token does not have",
      `${TEAM}\n[[token]]\nwho = "x"\nrole = "admin"\n`,
      /:\d+: role is not a token setting/,
    ],
    [
      "an unknown right, named among the valid ones",
      tokenTable("x", ["release", "deploy"], ["prod"], "t"),
      /:3: can = \["release", "deploy"\] is not valid: "deploy" is not a right; expected some of "release", "block", "override"/,
    ],
    [
      "a bad lock name, named",
      tokenTable("x", ["release"], ["prod", "Prod!"], "t"),
      /:4: locks = \["prod", "Prod!"\] is not valid: "Prod!" is not a lock name/,
    ],
    [
      "a setting written after a [[token]] table, which TOML reads as part of it",
      `${TEAM}\nport = 8080\n`,
      /:\d+: port is a setting: move it above the first \[\[token\]\] table \(settings go before the first table\)/,
    ],
    [
      "a setting a token also has, written after a [[token]] table",
      `${TEAM}\nlocks = ["prod"]\n`,
      /:\d+: not valid TOML: Cannot redefine key 'locks': if this locks is meant as the setting, move it above the first \[\[token\]\] table \(settings go before the first table\)/,
    ],
    [
      "two tokens for the same who",
      `${TEAM}\n${tokenTable("ana", ["release"], ["dev"], "another-token")}`,
      /:\d+: who = "ana" is also token #1's/,
    ],
    [
      "a token in place of its digest",
      '[[token]]\nwho = "x"\ncan = ["release"]\nlocks = ["*"]\nsha256 = "s3cret"\n',
      /:5: sha256 is not valid/,
    ],
    [
      "the same token twice",
      `${TEAM}\n${tokenTable("again", ["release"], ["dev"], ANA)}`,
      /:\d+: this sha256 is also token #1's/,
    ],
    ["a number in quotes", 'port = "8080"\n', /:1: port = "8080" is not valid: expected a whole number/],
    ["a port out of range", "port = 70000\n", /:1: port = 70000 is not valid: expected a whole number from 1 to 65535/],
    [
      'who = "token"',
      tokenTable("token", ["release"], ["*"], "t"),
      /:2: who = "token" is what RS_TOKEN is recorded as/,
    ],
  ];
  for (const [what, text, problem] of BAD)
    test(`${what}: start-up stops with exit code 2 and the file's line`, async () => {
      const file = configFile(text);
      // RS_PORT from the environment would win over the file's port, and hide its problem.
      const started = await runBinary([], { RS_CONFIG: file, ...(text.includes("port =") ? {} : { RS_PORT: "1" }) });
      expect(started.code).toBe(2);
      expect(started.stderr).toMatch(problem);
      expect(started.stderr).toContain(file);
      expect(started.stderr.trim().split("\n")).toHaveLength(1);
      const checked = await runBinary(["check-config", file]);
      expect(checked.code).toBe(2);
      expect(checked.stderr).toMatch(problem);
    });

  test("a file that cannot be read stops start-up", async () => {
    const started = await runBinary([], { RS_PORT: "1", RS_CONFIG: "/nonexistent/rs.toml" });
    expect(started.code).toBe(2);
    expect(started.stderr).toContain("cannot read RS_CONFIG=/nonexistent/rs.toml (ENOENT)");
  });

  test("the environment wins over the file for single settings", async () => {
    const file = configFile('port = 1\nmax_wait = 5\nlog_format = "json"\n');
    const d = await daemon({ RS_CONFIG: file, RS_LOG_FORMAT: "text" }); // RS_PORT from the test wins over port = 1
    expect(d.output()).toContain(" listening on ");
    expect(d.output()).not.toContain('{"');
    expect((await d.get("/start?wait=6")).status).toBe(400); // max_wait from the file
  });
});

describe("a syntax error is located in time linear in the file", () => {
  // Locating it used to re-parse every prefix of the file: 1,000 tokens took seconds, 20,000 would take most of an hour.
  test("20,000 [[token]] blocks with an error near the end: check-config and start-up name its line", async () => {
    const blocks = Array.from({ length: 20_000 }, (_, i) => tokenTable(`user${i}`, ["release"], ["*"], `t${i}`));
    blocks[19_990] = (blocks[19_990] as string).replace('can = ["release"]', 'can = ["release",, ]');
    const text = blocks.join("\n");
    const line = text.split("\n").findIndex((l) => l.includes(",,")) + 1;
    const file = configFile(text);
    const checked = await runBinary(["check-config", file]);
    expect(checked.code).toBe(2);
    expect(checked.stderr).toContain(`${file}:${line}: not valid TOML`);
    const started = await runBinary([], { RS_CONFIG: file, RS_PORT: "1" });
    expect(started.code).toBe(2);
    expect(started.stderr).toContain(`${file}:${line}: not valid TOML`);
  });

  test("the line is found for errors inside a value, across lines, and between tables", async () => {
    const cases: [string, number][] = [
      ['a_key = "x"\nlocks = [\n  "a",\n  "b" "c",\n]\n', 4], // inside a multi-line array
      ['read = "open"\n\nport = [1,\n', 3], // an array never closed
      ['[[token]]\nwho = "x\ncan = ["release"]\n', 2], // a string never closed
      ['[[token]]\nwho = "x"\n[[token]]\nwho = "y"\nwho = "z"\n', 5], // a key twice in one table
      ['hosts = ["a"]\nport = 1\nhosts = ["b"]\n', 3], // a key twice at the top
      ['s = """\n[[not a table]]\n"""\nport = 1 2\n', 4], // a header-like line inside a multi-line string
    ];
    for (const [text, line] of cases) {
      const { stderr } = await runBinary(["check-config", configFile(text)]);
      expect({ text, line: /\.toml:(\d+): not valid TOML/.exec(stderr)?.[1] }).toEqual({ text, line: String(line) });
    }
  });
});

describe("releasestatus check-config", () => {
  test("a valid file: exit 0 and what it holds, without secrets", async () => {
    const file = configFile(`port = 8080\nread = "token"\n${TEAM}`);
    const { code, stdout } = await runBinary(["check-config", file]);
    expect(code).toBe(0);
    expect(stdout).toContain("is valid");
    expect(stdout).toContain("ana (release on prod, staging)");
    expect(stdout).toContain("reading: needs a token");
    expect(stdout).not.toContain(sha(ANA));
  });

  test("no file, or more than one argument: exit 2 and how to use it", async () => {
    for (const args of [["check-config"], ["check-config", "a", "b"]]) {
      const { code, stderr } = await runBinary(args);
      expect(code).toBe(2);
      expect(stderr).toContain("usage: releasestatus check-config FILE");
    }
  });
});

describe("releasestatus token", () => {
  test("--help lists every right a token can be given, urgent among them", async () => {
    const { code, stdout, stderr } = await runBinary(["token", "--help"]);
    expect(code).toBe(0);
    for (const right of ["release (", "block (", "override (", "urgent ("]) expect(stdout + stderr).toContain(right);
  });

  test("prints a new token once and a [[token]] block that makes it work", async () => {
    const made = await runBinary(["token", "--who", "ana", "--can", "release,block", "--locks", "prod,staging"]);
    expect(made.code).toBe(0);
    // The token on stderr, the block alone on stdout: `>> releasestatus.toml` keeps the token out of the file.
    const token = /^rs_[A-Za-z0-9_-]{43}$/m.exec(made.stderr)?.[0]; // 256 random bits
    expect(token).toBeDefined();
    expect(made.stdout).not.toContain(token as string);
    const block = made.stdout.trim().split("\n");
    expect(block[1]).toBe("[[token]]"); // after a comment that says where it goes
    expect(block.join("\n")).toContain(`sha256 = "${sha(token as string)}"`);
    expect(made.stderr).toContain("shown only now");
    const again = await runBinary(["token", "--who", "ana", "--can", "release", "--locks", "prod"]);
    expect(again.stderr).not.toContain(token as string);
    const d = await daemon({ RS_CONFIG: configFile(block.join("\n")) });
    expect(await d.body("/locks/staging/block?name=ana", as(token as string))).toBe("1\n");
    const [blocked] = (await (await d.get("/history?format=json")).json()).events;
    expect(blocked).toMatchObject({ kind: "blocked", name: "ana", by: "ana" });
  });

  test("the block starts with a comment that says it goes after the file's settings", async () => {
    const made = await runBinary(["token", "--who", "ana", "--can", "release", "--locks", "prod"]);
    expect(made.code).toBe(0);
    const [comment, table] = made.stdout.split("\n");
    expect(comment).toMatch(/^# .*after the settings/);
    expect(table).toBe("[[token]]");
  });

  test("--help prints the usage on stdout and exits 0", async () => {
    for (const help of ["--help", "-h"]) {
      const { code, stdout, stderr } = await runBinary(["token", help]);
      expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
      expect(stdout).toContain("usage: releasestatus token --who NAME");
    }
  });

  test("bad arguments: exit 2, nothing printed on stdout", async () => {
    for (const args of [
      ["token"],
      ["token", "--who", "ana", "--can", "deploy", "--locks", "prod"],
      ["token", "--who", "ana", "--can", "release", "--locks", "Prod!"],
      ["token", "--who", "", "--can", "release", "--locks", "prod"],
      ["token", "--who", "token", "--can", "release", "--locks", "prod"],
      ["token", "--who", "ana", "--can", "release", "--locks"],
    ]) {
      const { code, stdout } = await runBinary(args);
      expect({ args, code, stdout }).toEqual({ args, code: 2, stdout: "" });
    }
  });
});

describe("a request without a valid token learns nothing about which locks exist", () => {
  // What a caller sees of one path: the same for a lock that exists and one that does not.
  const seen = async (d: Daemon, path: string, init: RequestInit = {}) => {
    const res = await d.get(path, init);
    return { status: res.status, code: res.headers.get("x-reason-code"), reason: res.headers.get("x-reason") };
  };
  const sameFor = async (d: Daemon, known: string, unknown: string, init: RequestInit = {}) => {
    const a = await seen(d, known, init);
    const b = await seen(d, unknown, init);
    expect({ unknown, ...b }).toEqual({ unknown, ...a, reason: a.reason?.replaceAll("prod", "nope") ?? null });
    return a;
  };

  for (const read of ["open", "token"]) {
    test(`read = "${read}": a change on a lock RS_LOCKS does not allow is 401 like one it allows, naming no lock`, async () => {
      const { d } = await withTeam(`read = "${read}"\nlocks = ["prod", "staging"]`);
      for (const action of ["start", "stop", "renew", "block", "unblock"]) {
        const a = await sameFor(d, `/locks/prod/${action}`, `/locks/nope/${action}`);
        expect(a.status).toBe(401);
        expect(a.reason).not.toContain("staging");
      }
      expect((await (await d.get("/history?format=json", as(OPS))).json()).events).toEqual([]);
    });
  }

  test("the original's paths without a token are 401, not a list of RS_LOCKS, when default is not one of them", async () => {
    const { d } = await withTeam('locks = ["prod", "staging"]');
    for (const path of ["/start", "/stop"]) {
      const { status, reason } = await seen(d, path);
      expect({ path, status }).toEqual({ path, status: 401 });
      expect(reason).not.toContain("staging");
    }
  });

  test("at RS_MAX_LOCKS a change without a token is 401 for a new name as for one in use", async () => {
    const { d } = await withTeam("", { RS_MAX_LOCKS: "1" }); // one lock besides default
    expect(await d.body("/locks/prod/start?name=ops", as(OPS))).toBe("1\n");
    expect((await d.get("/locks/nope/start", as(OPS))).headers.get("x-reason")).toContain("RS_MAX_LOCKS");
    expect((await sameFor(d, "/locks/prod/stop", "/locks/nope/stop")).status).toBe(401);
    expect((await sameFor(d, "/locks/prod/start", "/locks/nope/start", { method: "POST" })).status).toBe(401);
  });

  test('read = "token": a lock\'s page, an unknown action and a wrong method answer the same for any name', async () => {
    const { d } = await withTeam('read = "token"\nlocks = ["prod", "staging"]');
    expect((await sameFor(d, "/locks/prod/", "/locks/nope/")).status).toBe(200);
    expect((await sameFor(d, "/locks/prod/launch", "/locks/nope/launch")).status).toBe(404);
    expect((await sameFor(d, "/locks/prod/start", "/locks/nope/start", { method: "PUT" })).status).toBe(405);
    expect((await sameFor(d, "/locks/prod/status", "/locks/nope/status", { method: "PUT" })).status).toBe(405);
  });

  test("with a valid token the caller is told which lock does not exist", async () => {
    const { d } = await withTeam('read = "token"\nlocks = ["prod", "staging"]');
    const res = await d.get("/locks/nope/start", as(OPS));
    expect(res.status).toBe(404);
    expect(res.headers.get("x-reason")).toContain("RS_LOCKS allows only prod, staging");
  });
});

describe("what a hostile reviewer found, closed", () => {
  test("a reload that would leave no token at all is refused: an emptied file does not open the daemon", async () => {
    const { d, file } = await withTeam();
    await reload(d, file, "", "was not reloaded");
    expect(d.output()).toContain("no token at all");
    expect((await d.get("/block")).status).toBe(401);
  });

  test('read = "token" without any token is refused at start-up: reading closed, changes open is no setting', async () => {
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_CONFIG: configFile('read = "token"\n') });
    expect(code).toBe(2);
    expect(stderr).toContain('read = "token" with no token at all');
  });

  test("a refused change's JSON carries the lock's status only for a caller who may read it", async () => {
    const { d } = await withTeam('read = "token"');
    expect(await d.body("/locks/prod/start?name=secret-person", as(OPS))).toBe("1\n");
    const anonymous = await (await d.get("/locks/prod/start?format=json")).json();
    expect(anonymous).toMatchObject({ ok: false, reason: "unauthorized", status: null });
    expect(JSON.stringify(anonymous)).not.toContain("secret-person");
    const reader = await (await d.get("/locks/prod/start?format=json", as(BOB))).json();
    expect(reader.status.release.name).toBe("secret-person");
  });

  test('with read = "token" an unknown lock is 401 like a known one: no guessing which locks exist', async () => {
    const { d } = await withTeam('read = "token"\nlocks = ["prod", "staging"]');
    for (const path of ["/locks/nope/status", "/locks/prod/status", "/status"])
      expect({ path, status: (await d.get(path)).status }).toEqual({ path, status: 401 });
  });

  test("event streams end when a reload changes who may read, so a revoked reader stops hearing", async () => {
    const { d, file } = await withTeam();
    const res = await d.get("/events"); // reading is open: no token
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the first status
    await reload(d, file, `read = "token"\n${TEAM}`, "configuration reloaded");
    let ended = false;
    for (let i = 0; i < 100 && !ended; i++) ended = (await reader.read()).done;
    expect(ended).toBe(true);
    expect((await d.get("/events")).status).toBe(401);
  });

  test("a waiter whose token is revoked while it waits leaves the line with 401, and is not handed the release", async () => {
    const { d, file } = await withTeam();
    expect(await d.body("/locks/prod/start?name=holder", as(OPS))).toBe("1\n");
    const waiter = d.get("/locks/prod/start?name=ana&wait=30", as(ANA));
    await until(async () => (await queueOf(d, "prod")).length === 1, "the waiter in line");
    await reload(d, file, WITHOUT_ANA, "configuration reloaded");
    expect(await d.body("/locks/prod/stop", as(OPS))).toBe("1\n");
    const answer = await waiter;
    expect({ status: answer.status, body: await answer.text() }).toEqual({ status: 401, body: "0\n" });
    expect((await (await d.get("/locks/prod/status?format=json")).json()).running).toBe(false);
  });

  test("a token in the URL is refused in any spelling", async () => {
    const { d } = await withTeam();
    for (const key of ["Token", "TOKEN", "access-token", "accessToken", "Access_Token", "token%5B%5D", "token%20"]) {
      const res = await d.get(`/locks/prod/start?${key}=${ANA}`, as(ANA));
      expect({ key, status: res.status }).toEqual({ key, status: 400 });
    }
    expect(await historyKinds(d)).toEqual([]);
  });

  test('who must be plain ASCII, and no spelling of "token"', async () => {
    for (const who of ["Token", "token ", "t\u043eken", " ana", "ana\u202e"]) {
      const { code, stderr } = await runBinary(["check-config", configFile(tokenTable(who, ["release"], ["*"], "x"))]);
      expect({ who, code }).toEqual({ who, code: 2 });
      expect(stderr).toContain(":2: who = ");
    }
  });

  test("an error quoting a refused value escapes direction overrides and other invisible characters", async () => {
    const { code, stderr } = await runBinary([
      "check-config",
      configFile(tokenTable("ana\u202eevil", ["release"], ["*"], "x")),
    ]);
    expect(code).toBe(2);
    expect(stderr).toContain('who = "ana\\u202eevil" is not valid');
    expect(stderr).not.toMatch(/[\u202a-\u202e\u2066-\u2069]/);
  });

  test("a token whose sha256 is that of the empty string is refused: an empty bearer token must never match", async () => {
    const empty = sha("");
    for (const digest of [empty, empty.toUpperCase()]) {
      const file = configFile(`[[token]]\nwho = "x"\ncan = ["release"]\nlocks = ["*"]\nsha256 = "${digest}"\n`);
      const { code, stderr } = await runBinary(["check-config", file]);
      expect(code).toBe(2);
      expect(stderr).toContain(":5: sha256 is the SHA-256 of the empty string");
    }
  });

  test("a reload never logs a database URL, which may hold a password", async () => {
    const file = configFile(`db = "postgres://rs:OLDpass@127.0.0.1:1/x"\n${TEAM}`);
    const d = await startDaemon({ RS_CONFIG: file, RS_DB: "" }); // the file's db; it is away, the daemon still starts
    await reload(d, file, `db = "postgres://rs:NEWpass@127.0.0.1:1/x"\n${TEAM}`, "take effect only on a restart");
    expect(d.output()).not.toContain("OLDpass");
    expect(d.output()).not.toContain("NEWpass");
  });

  test("RS_TOKEN's changes say so in words too, not only in JSON", async () => {
    const { d } = await withTeam("", { RS_TOKEN: ADMIN });
    expect(await d.body("/locks/staging/start?name=ops", as(ADMIN))).toBe("1\n");
    expect(await d.body("/history")).toContain("release #1 on staging by ops, started with RS_TOKEN");
  });
});
