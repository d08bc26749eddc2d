// GET /metrics, checked with Prometheus's own parser (promtool, from Debian's
// `prometheus` package). Runs in `make test-metrics`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type Daemon, startDaemon, until } from "./daemon.ts";

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

// The reason codes a /start can be refused for, as the README lists them: every code in its table but
// those only other endpoints give.
const NOT_FOR_START = new Set([
  "not-running",
  "not-blocked",
  "wrong-id",
  "not-found",
  "method-not-allowed",
  "too-many-streams",
]);
const README_START_REFUSALS = [
  ...readFileSync(join(import.meta.dir, "..", "README.md"), "utf8").matchAll(/^\| `([a-z-]+)` +\| (\d{3}) +\|/gm),
]
  .map((m) => m[1] as string)
  .filter((code) => !NOT_FOR_START.has(code));

/** Samples by name and labels, e.g. value['releasestatus_start_refused_total{reason="running"}']. */
async function scrape(): Promise<Record<string, number>> {
  const text = await d.body("/metrics");
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
  test("is valid Prometheus exposition from the first scrape, every refusal reason at zero", async () => {
    const res = await d.get("/metrics");
    expect(res.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const m = await scrape();
    expect(README_START_REFUSALS.length).toBeGreaterThan(8);
    for (const reason of README_START_REFUSALS)
      expect(m[`releasestatus_start_refused_total{lock="default",reason="${reason}"}`]).toBe(0);
    expect(m).toMatchObject({
      'releasestatus_running{lock="default"}': 0,
      'releasestatus_blocked{lock=""}': 0,
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
    expect(m['releasestatus_blocked{lock=""}']).toBe(1); // /block blocks the root, and so every lock

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
