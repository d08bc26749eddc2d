// GET /metrics, checked with Prometheus's own parser (promtool, from Debian's
// `prometheus` package). Runs in `make test-metrics`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { START_REFUSALS } from "../src/metrics.ts";
import { type Daemon, startDaemon } from "./daemon.ts";

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
    for (const reason of START_REFUSALS) expect(m[`releasestatus_start_refused_total{reason="${reason}"}`]).toBe(0);
    expect(m).toMatchObject({
      releasestatus_running: 0,
      releasestatus_blocked: 0,
      releasestatus_waiting: 0,
      releasestatus_releases_started_total: 0,
      releasestatus_release_started_timestamp_seconds: 0,
      releasestatus_release_duration_seconds_count: 0,
    });
  });

  test("follows the state: starts, refusals, blocks, waiters and completed releases", async () => {
    const before = Date.now() / 1000;
    await d.body("/start?name=sion");
    await d.body("/start?name=bob");
    await d.body("/start?ttl=zero");
    let m = await scrape();
    expect(m.releasestatus_running).toBe(1);
    expect(m.releasestatus_releases_started_total).toBe(1);
    expect(m['releasestatus_start_refused_total{reason="running"}']).toBe(1);
    expect(m['releasestatus_start_refused_total{reason="invalid"}']).toBe(1);
    expect(m.releasestatus_release_started_timestamp_seconds).toBeGreaterThanOrEqual(Math.floor(before));

    const waiter = d.body("/start?name=patient&wait=10");
    await d.body("/block");
    for (let i = 0; i < 100 && (await scrape()).releasestatus_waiting !== 1; i++) await Bun.sleep(20);
    m = await scrape();
    expect(m.releasestatus_waiting).toBe(1);
    expect(m.releasestatus_blocked).toBe(1);

    await d.body("/stop");
    await d.body("/unblock");
    expect(await waiter).toBe("1\n");
    await d.body("/stop");
    m = await scrape();
    expect(m.releasestatus_waiting).toBe(0);
    expect(m.releasestatus_releases_started_total).toBe(2);
    expect(m.releasestatus_release_duration_seconds_count).toBe(2);
    expect(m['releasestatus_release_duration_seconds_bucket{le="+Inf"}']).toBe(2);
    expect(m['releasestatus_release_duration_seconds_bucket{le="60"}']).toBe(2);
  });
});
