// GET /metrics, checked with Prometheus's own parser (promtool, from Debian's
// `prometheus` package), and the README's alert rules fired in a real Prometheus
// server scraping real daemons. Runs in `make test-metrics`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configFile, type Daemon, daemonsPerTest, freePort, startDaemon, tempDir, until } from "./daemon.ts";

let d: Daemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d.stop();
});

async function promtool(exposition: string) {
  const proc = Bun.spawn(["promtool", "check", "metrics"], {
    stdin: new Blob([exposition]),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, problems: (out + err).trim() };
}

// The reason codes a /start can be refused for, as docs/endpoints.md lists them: every code in its table but
// those only other endpoints give.
const NOT_FOR_START = new Set([
  "not-running",
  "not-blocked",
  "wrong-id",
  "not-found",
  "ambiguous",
  "method-not-allowed",
  "too-many-streams",
]);
const README_START_REFUSALS = [
  ...readFileSync(join(import.meta.dir, "..", "docs", "endpoints.md"), "utf8").matchAll(
    /^\| `([a-z-]+)` +\| (\d{3}) +\|/gm,
  ),
]
  .map((m) => m[1] as string)
  .filter((code) => !NOT_FOR_START.has(code));

/** Samples by name and labels, e.g. value['releasestatus_start_refused_total{reason="running"}']. */
async function scrape(from: Daemon = d): Promise<Record<string, number>> {
  const text = await from.body("/metrics");
  const checked = await promtool(text);
  expect(checked).toEqual({ code: 0, problems: "" });
  const samples: Record<string, number> = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const cut = line.lastIndexOf(" ");
    samples[line.slice(0, cut)] = Number(line.slice(cut + 1));
  }
  return samples;
}

describe("/metrics", () => {
  test("is valid Prometheus exposition from the first scrape, every refusal reason that can happen at zero", async () => {
    const res = await d.get("/metrics");
    expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const m = await scrape();
    expect(README_START_REFUSALS.length).toBeGreaterThan(8);
    // Without tokens, [[trust]], freezes, RS_LOCKS, a limit above 1 or a newest-first lock, no start can be
    // unauthorized, frozen, full, on an unknown lock, superseded or stale.
    const CANNOT_HAPPEN = [
      "unauthorized",
      "issuer-unreachable",
      "frozen",
      "unknown-lock",
      "full",
      "superseded",
      "stale",
    ];
    for (const reason of README_START_REFUSALS)
      expect([reason, m[`releasestatus_start_refused_total{lock="default",reason="${reason}"}`]]).toEqual([
        reason,
        CANNOT_HAPPEN.includes(reason) ? undefined : 0,
      ]);
    expect(m).toMatchObject({
      'releasestatus_running{lock="default"}': 0,
      'releasestatus_blocked{lock="/"}': 0,
      'releasestatus_blocked{lock="default"}': 0,
      'releasestatus_waiting{lock="default"}': 0,
      'releasestatus_releases_started_total{lock="default"}': 0,
      'releasestatus_release_started_timestamp_seconds{lock="default"}': 0,
      'releasestatus_release_duration_seconds_count{lock="default"}': 0,
    });
  });

  test("follows the state: starts, refusals, blocks, waiters and completed releases", async () => {
    const before = Date.now() / 1000;
    await d.body("/start?name=sion");
    await d.body("/start?name=bob");
    await d.body("/start?ttl=zero");
    let m = await scrape();
    expect(m['releasestatus_running{lock="default"}']).toBe(1);
    expect(m['releasestatus_releases_started_total{lock="default"}']).toBe(1);
    expect(m['releasestatus_start_refused_total{lock="default",reason="running"}']).toBe(1);
    expect(m['releasestatus_start_refused_total{lock="default",reason="invalid"}']).toBe(1);
    expect(m['releasestatus_release_started_timestamp_seconds{lock="default"}']).toBeGreaterThanOrEqual(
      Math.floor(before),
    );

    const waiter = d.body("/start?name=patient&wait=10");
    await d.body("/block");
    await until(async () => (await scrape())['releasestatus_waiting{lock="default"}'] === 1, "the waiter in line");
    m = await scrape();
    expect(m['releasestatus_blocked{lock="/"}']).toBe(1); // /block blocks the root, and so every lock

    await d.body("/stop");
    await d.body("/unblock");
    expect(await waiter).toBe("1\n");
    await d.body("/stop");
    m = await scrape();
    expect(m['releasestatus_waiting{lock="default"}']).toBe(0);
    expect(m['releasestatus_releases_started_total{lock="default"}']).toBe(2);
    expect(m['releasestatus_release_duration_seconds_count{lock="default"}']).toBe(2);
    expect(m['releasestatus_release_duration_seconds_bucket{lock="default",le="+Inf"}']).toBe(2);
    // Short releases land in the first buckets, not in one of a minute.
    expect(m['releasestatus_release_duration_seconds_bucket{lock="default",le="5"}']).toBe(2);
  });
});

const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
const as = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });
const PROD = "prod-token-0123456789abcdef";
const STAGE = "stage-token-0123456789abcdef";
const TEAM = [
  ["ci-prod", PROD, "prod"],
  ["ci-staging", STAGE, "staging"],
]
  .map(
    ([who, token, lock]) =>
      `[[token]]\nwho = "${who}"\ncan = ["release"]\nlocks = ["${lock}"]\nsha256 = "${sha(token as string)}"\n`,
  )
  .join("\n");
const others = daemonsPerTest();
const refused = (lock: string, reason: string) =>
  `releasestatus_start_refused_total{lock="${lock}",reason="${reason}"}`;

describe("every refused start is counted with its reason on the lock asked for", () => {
  test("401, 403, invalid and running on a lock that was never itself held, blocked or waited on", async () => {
    const team = await others({ RS_CONFIG: configFile(TEAM) });
    for (let i = 0; i < 3; i++) expect((await team.get("/locks/prod/start")).status).toBe(401);
    for (let i = 0; i < 3; i++) expect((await team.get("/locks/prod/start", as(STAGE))).status).toBe(403);
    expect(await team.body("/locks/prod/eu/start?name=sion", as(PROD))).toBe("1\n");
    for (let i = 0; i < 2; i++) expect(await team.body("/locks/prod/start", as(PROD))).toBe("0\n"); // held below
    expect((await team.get("/locks/prod/start?ttl=zero", as(PROD))).status).toBe(400);
    expect((await team.get("/locks/prod/start?token=s3cret")).status).toBe(400); // a token in the URL
    expect((await team.get("/locks/Prod%21/start", as(PROD))).status).toBe(400); // no lock at all
    const m = await scrape(team);
    expect({
      unauthorized: m[refused("prod", "unauthorized")],
      forbidden: m[refused("prod", "forbidden")],
      running: m[refused("prod", "running")],
      invalid: m[refused("prod", "invalid")],
      started: m['releasestatus_releases_started_total{lock="prod/eu"}'],
      other: m[refused("(other)", "invalid")],
    }).toEqual({ unauthorized: 3, forbidden: 3, running: 2, invalid: 2, started: 1, other: 1 });
    // The token's other lock has its series before any use, so an alert's rate starts from zero.
    expect(m[refused("staging", "unauthorized")]).toBe(0);
  });

  test("a start of several locks (lock= repeated) is counted on the first it names, not on default", async () => {
    const open = await others();
    expect(await open.body("/locks/prod/start?name=sion")).toBe("1\n");
    expect(await open.body("/start?lock=prod&lock=db&name=ana")).toBe("0\n"); // prod runs
    const m = await scrape(open);
    expect([m[refused("prod", "running")], m[refused("default", "running")]]).toEqual([1, 0]);
  });

  test("refused starts on ever new names are counted on (other), so they cannot grow the metrics", async () => {
    const open = await others();
    await open.body("/block?name=ana");
    for (let i = 0; i < 20; i++) expect(await open.body(`/locks/random${i}/start`)).toBe("0\n");
    const text = await open.body("/metrics");
    expect(text).not.toContain("random");
    expect((await scrape(open))[refused("(other)", "blocked")]).toBe(20);
  });
});

describe("series exist only for what can happen, and default only where it is a lock", () => {
  test("with RS_LOCKS and no default: no default series, unknown-lock only on (other), counted there", async () => {
    const listed = await others({ RS_LOCKS: "staging,prod" });
    expect((await listed.get("/start")).status).toBe(404);
    expect((await listed.get("/locks/qa/start")).status).toBe(404);
    const text = await listed.body("/metrics");
    expect(text).not.toContain('lock="default"');
    expect(text).not.toMatch(/lock="(staging|prod)",reason="unknown-lock"/);
    expect(text).not.toContain('reason="unauthorized"'); // no token is asked for
    const m = await scrape(listed);
    expect(m[refused("(other)", "unknown-lock")]).toBe(2);
    expect(m[refused("prod", "running")]).toBe(0);
    expect(m['releasestatus_blocked{lock="/"}']).toBe(0);
    expect(text).not.toContain('lock=""');
    const board = (await (await listed.get("/locks?format=json")).json()) as { lock: string }[];
    expect(board.map((s) => s.lock)).not.toContain("default");
  });
});

describe("the daemon describes itself: build info and process metrics", () => {
  test("releasestatus_build_info has the version and Bun's; process_* are there and plausible", async () => {
    const version = JSON.parse(readFileSync(join(import.meta.dir, "..", "package.json"), "utf8")).version;
    const m = await scrape();
    const info = Object.keys(m).find((k) => k.startsWith("releasestatus_build_info{"));
    expect(info).toMatch(new RegExp(`version="${version.replaceAll(".", "\\.")}"`));
    expect(info).toMatch(/bun_version="\d+\.\d+\.\d+/);
    expect(m.process_resident_memory_bytes).toBeGreaterThan(1_000_000);
    expect(m.process_cpu_seconds_total).toBeGreaterThan(0);
    expect(m.process_open_fds).toBeGreaterThan(2);
    const now = Date.now() / 1000;
    expect(m.process_start_time_seconds).toBeGreaterThan(now - 3600);
    expect(m.process_start_time_seconds).toBeLessThanOrEqual(now);
  });

  test("while the state cannot be read, /metrics still answers, with storage_healthy 0", async () => {
    const lost = await others({ RS_DB: `postgres://rs:rs@127.0.0.1:${freePort()}/rs` }); // nothing listens there
    const m = await scrape(lost);
    expect(m.releasestatus_storage_healthy).toBe(0);
    expect(m.process_resident_memory_bytes).toBeGreaterThan(0);
  });
});

// The alert rules of the metrics part of docs/endpoints.md, as a team would paste them.
const README = readFileSync(join(import.meta.dir, "..", "docs", "endpoints.md"), "utf8");
const RULES = /```yaml\n(groups:\n[\s\S]*?)```/.exec(README)?.[1] ?? "";

describe("the README's alert rules fire in a real Prometheus", () => {
  test("are valid rules for promtool", async () => {
    const file = join(tempDir(), "rules.yml");
    writeFileSync(file, RULES);
    const proc = Bun.spawnSync(["promtool", "check", "rules", file]);
    expect({ code: proc.exitCode, out: proc.stderr.toString() }).toEqual({ code: 0, out: "" });
    expect(RULES).toContain("alert:");
  });

  test("a broken CI token, a release running too long and storage failing each fire their alert", async () => {
    // A token that is refused; a release restored from a database where it started days ago; storage unreachable.
    const team = await others({ RS_CONFIG: configFile(TEAM) });
    const old = join(tempDir(), "state.db");
    copyFileSync(join(import.meta.dir, "fixtures", "v1-release-2-running-blocked.db"), old);
    const long = await others({ RS_DB: old });
    const lost = await others({ RS_DB: `postgres://rs:rs@127.0.0.1:${freePort()}/rs` });
    const prom = await startPrometheus([team, long, lost]);
    try {
      // The counter must be seen at zero before the refusals, as Prometheus would have seen it all along.
      await until(
        async () => (await prom.query(`${refused("prod", "unauthorized")}`)).length > 0,
        "Prometheus to scrape the daemons",
        30_000,
      );
      for (let i = 0; i < 3; i++) expect((await team.get("/locks/prod/start")).status).toBe(401);
      const firing = async () =>
        new Set(
          (await prom.alerts())
            .filter((a) => a.state === "firing")
            .map((a) => `${a.labels.alertname} ${a.labels.instance}`),
        );
      const names = [...RULES.matchAll(/alert: (\S+)/g)].map((m) => m[1]);
      expect(names).toHaveLength(3);
      const expected = [
        `${names[0]} 127.0.0.1:${team.port}`,
        `${names[1]} 127.0.0.1:${long.port}`,
        `${names[2]} 127.0.0.1:${lost.port}`,
      ];
      await until(
        async () => {
          const now = await firing();
          return expected.every((a) => now.has(a));
        },
        `the alerts ${expected.join(", ")} to fire`,
        60_000,
      ).catch(async (e) => {
        throw new Error(`${e.message}; firing: ${[...(await firing())].join(", ")}\n${prom.output()}`);
      });
    } finally {
      await prom.stop();
    }
  }, 120_000);
});

type Alert = { state: string; labels: Record<string, string> };

/** Prometheus on a free loopback port, scraping `targets` and evaluating the README's rules every second. */
async function startPrometheus(targets: Daemon[]) {
  const dir = tempDir("rs-prometheus-");
  writeFileSync(join(dir, "rules.yml"), RULES);
  writeFileSync(
    join(dir, "prometheus.yml"),
    [
      "global:",
      "  scrape_interval: 1s",
      "  evaluation_interval: 1s",
      "rule_files: [rules.yml]",
      "scrape_configs:",
      "  - job_name: releasestatus",
      "    static_configs:",
      `      - targets: [${targets.map((t) => `"127.0.0.1:${t.port}"`).join(", ")}]`,
      "",
    ].join("\n"),
  );
  const port = freePort();
  const proc = Bun.spawn(
    [
      "prometheus",
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { cwd: dir, stdout: "pipe", stderr: "pipe" },
  );
  let text = "";
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += new TextDecoder().decode(chunk);
  };
  void drain(proc.stdout);
  void drain(proc.stderr);
  const api = async (path: string) => {
    const res = await fetch(`http://127.0.0.1:${port}/api/v1/${path}`);
    return (await res.json()).data;
  };
  const prom = {
    query: async (q: string): Promise<unknown[]> => (await api(`query?query=${encodeURIComponent(q)}`)).result,
    alerts: async (): Promise<Alert[]> => (await api("alerts")).alerts,
    output: () => text.slice(-4000),
    stop: async () => {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
  await until(async () => (await fetch(`http://127.0.0.1:${port}/-/ready`)).ok, "Prometheus to be ready", 30_000).catch(
    async (e) => {
      await prom.stop();
      throw new Error(`${e.message}\n${text}`);
    },
  );
  return prom;
}
