// The figures of issue 28, for bench/run.ts: draining a line of waiters, the hand-off latency,
// ten thousand locks in use, and a soak with a memory plot. Every loop is bounded (a count, or a
// deadline), and each scenario starts and kills its own daemon.
import { readFileSync } from "node:fs";
import type { Subprocess } from "bun";

export type Daemon = { proc: Subprocess; url: string; pid: number; port: number };
export type Target = { what: string; target: string; measured: string; met: boolean | null };

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};
export const percentile = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};
export const rssMb = (pid: number): number =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

/**
 * One request on a connection of its own, written by hand: fetch keeps at most 256 requests in
 * flight, and a line of ten thousand waiters needs ten thousand open at once. Resolves with the
 * body when the daemon answers; rejects after `timeoutMs`.
 */
export function rawGet(port: number, path: string, timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    let done = false;
    const finish = (error: Error | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(bodyOf(got));
    };
    const timer = setTimeout(() => finish(new Error(`${path}: no answer in ${timeoutMs} ms`)), timeoutMs);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
        },
        data(s, chunk) {
          got += chunk.toString();
          if (complete(got)) {
            s.end();
            finish(null);
          }
        },
        close() {
          finish(complete(got) ? null : new Error(`${path}: connection closed before the answer`));
        },
        error(_s, e) {
          finish(e);
        },
      },
    }).catch((e) => finish(e as Error));
  });
}

const complete = (raw: string): boolean => {
  const head = raw.indexOf("\r\n\r\n");
  if (head < 0) return false;
  const length = /content-length:\s*(\d+)/i.exec(raw.slice(0, head))?.[1];
  return length !== undefined && Buffer.byteLength(raw.slice(head + 4)) >= Number(length);
};
const bodyOf = (raw: string): string => raw.slice(raw.indexOf("\r\n\r\n") + 4);

/** How many wait for `lock`, as /metrics says. */
async function waitingOn(d: Daemon, lock: string): Promise<number> {
  const text = await (await fetch(`${d.url}/metrics`)).text();
  const m = new RegExp(`^releasestatus_waiting\\{lock="${lock}"\\} (\\d+)`, "m").exec(text);
  return Number(m?.[1] ?? 0);
}

/** Waits until `lock` has `n` waiters (bounded: gives up after a minute without progress). */
async function untilWaiting(d: Daemon, lock: string, n: number) {
  let last = -1;
  let stuckSince = performance.now();
  for (;;) {
    const now = await waitingOn(d, lock);
    if (now >= n) return;
    if (now !== last) [last, stuckSince] = [now, performance.now()];
    if (performance.now() - stuckSince > 60_000) throw new Error(`only ${now} of ${n} waiters joined`);
    await Bun.sleep(20);
  }
}

export type Drain = { waiters: number; totalMs: number; perHandoffMs: number; p50Ms: number; p99Ms: number };

/**
 * A queue of deploys draining: `n` waiters on the default lock, each stopping its release as soon
 * as it is granted. The hand-off latency is from a stop being sent to the next waiter's `1`.
 */
export async function drain(d: Daemon, n: number): Promise<Drain> {
  const expect1 = async (p: Promise<string>, what: string) => {
    const body = await p;
    if (body !== "1\n") throw new Error(`${what} answered ${JSON.stringify(body)}, not 1`);
  };
  // A shared store (PostgreSQL) may still hold a release that an earlier scenario's load left when it ended.
  await rawGet(d.port, "/stop");
  await expect1(rawGet(d.port, "/start?name=holder"), "the holder's start");
  const granted: Promise<void>[] = [];
  const latencies: number[] = [];
  let stopSentAt = 0;
  let finished = 0;
  let allDone = () => {};
  const drained = new Promise<void>((resolve) => (allDone = resolve));
  const BATCH = 250; // joined a batch at a time, so the daemon's accept queue never overflows
  for (let i = 0; i < n; i += BATCH) {
    for (let j = i; j < Math.min(n, i + BATCH); j++)
      granted.push(
        expect1(rawGet(d.port, `/start?name=w${j}&wait=3600`, 3_600_000), `waiter ${j}`).then(async () => {
          latencies.push(performance.now() - stopSentAt);
          stopSentAt = performance.now();
          await expect1(rawGet(d.port, "/stop"), `waiter ${j}'s stop`);
          if (++finished === n) allDone();
        }),
      );
    await untilWaiting(d, "default", Math.min(n, i + BATCH));
  }
  const began = performance.now();
  stopSentAt = began;
  await expect1(rawGet(d.port, "/stop"), "the holder's stop");
  await Promise.race([drained, Promise.all(granted)]);
  const totalMs = performance.now() - began;
  return {
    waiters: n,
    totalMs,
    perHandoffMs: totalMs / n,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
  };
}

export type ManyLocks = { populateMs: number; rssBeforeMb: number; rssAfterMb: number; locksMs: number[] };

/**
 * Ten thousand locks in use: every fifth held, every fifth blocked, every fifth with a waiter (an
 * open connection each), every one with history (a release started and stopped). /locks is timed
 * `reads` times.
 */
export async function manyLocks(d: Daemon, locks: number, reads = 21): Promise<ManyLocks> {
  const rssBeforeMb = rssMb(d.pid);
  const began = performance.now();
  const CONCURRENCY = 32;
  const waiters: Promise<string>[] = [];
  let next = 0;
  const one = async (i: number) => {
    const lock = `/locks/team${i}/app`;
    const ok = async (path: string) => {
      const body = await (await fetch(d.url + path)).text();
      if (body !== "1\n") throw new Error(`${path} answered ${JSON.stringify(body)}`);
    };
    await ok(`${lock}/start?name=past`);
    await ok(`${lock}/stop`);
    if (i % 5 === 0 || i % 5 === 2) await ok(`${lock}/start?name=holder${i}`);
    if (i % 5 === 1) await ok(`${lock}/block?reason=bench`);
    if (i % 5 === 2) waiters.push(rawGet(d.port, `${lock}/start?name=waiter${i}&wait=3600`, 3_600_000).catch(() => ""));
  };
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < locks; i = next++) await one(i);
    }),
  );
  const populateMs = performance.now() - began;
  await Bun.sleep(1000); // the last waiters join
  const locksMs: number[] = [];
  for (let i = 0; i < reads; i++) {
    const t = performance.now();
    const res = await fetch(`${d.url}/locks`);
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`/locks answered ${res.status}`);
    locksMs.push(performance.now() - t);
  }
  return { populateMs, rssBeforeMb, rssAfterMb: rssMb(d.pid), locksMs };
}

export type Soak = { samples: { atS: number; rssMb: number }[]; requests: number; errors: number; rate: number };

/**
 * Mixed load at `rate` requests a second for `seconds`, resident memory sampled every `everyS`: starts
 * and stops with leases and renewals, waiters that join and leave (a short wait=), status reads, and event
 * streams opened and closed, over 20 locks. Sent at the rate whatever the answers take (at most 200 at
 * once), so slow answers (a wait, a stream) do not slow the rest.
 */
export async function soak(d: Daemon, rate: number, seconds: number, everyS: number): Promise<Soak> {
  const samples = [{ atS: 0, rssMb: rssMb(d.pid) }];
  const began = performance.now();
  const end = began + seconds * 1000;
  let requests = 0;
  let errors = 0;
  let inFlight = 0;
  const sampler = setInterval(
    () => samples.push({ atS: Math.round((performance.now() - began) / 1000), rssMb: rssMb(d.pid) }),
    everyS * 1000,
  );
  const get = async (path: string): Promise<{ body: string; id: string | null }> => {
    requests++;
    const res = await fetch(d.url + path).catch(() => null);
    if (!res || res.status >= 500) errors++;
    return { body: res ? await res.text() : "", id: res?.headers.get("X-Release-Id") ?? null };
  };
  // Whoever is granted stops its own release again, so no lock stays held.
  const release = async (lock: string, start: string, renew: boolean) => {
    const { body, id } = await get(`${lock}/start?${start}`);
    if (body !== "1\n") return;
    if (renew) await get(`${lock}/renew?id=${id}&ttl=30`);
    await get(`${lock}/stop?id=${id}`);
  };
  const one = async (turn: number) => {
    const lock = `/locks/soak${turn % 20}`;
    switch (turn % 10) {
      case 0:
      case 1:
        return release(lock, `name=soak${turn}&ttl=30`, true);
      case 2:
        return release(lock, `name=waiter${turn}&wait=1`, false); // joins the line, then is served or leaves
      case 3: {
        requests++;
        const stream = new AbortController();
        const res = await fetch(`${d.url}${lock}/events`, { signal: stream.signal }).catch(() => null);
        await Bun.sleep(50);
        stream.abort();
        await res?.body?.cancel().catch(() => {});
        return;
      }
      case 4:
        return void (await get(`${lock}/status?format=json`));
      default:
        return void (await get(`${lock}/status`));
    }
  };
  const TICK_MS = 10;
  let turn = 0;
  let owed = 0;
  while (performance.now() < end) {
    const t = performance.now();
    owed += (rate * TICK_MS) / 1000;
    for (; owed >= 1; owed--)
      if (inFlight < 200) {
        inFlight++;
        void one(turn++).finally(() => inFlight--);
      }
    await Bun.sleep(Math.max(0, TICK_MS - (performance.now() - t)));
  }
  for (let i = 0; i < 1000 && inFlight > 0; i++) await Bun.sleep(10); // the last answers, ten seconds at most
  clearInterval(sampler);
  samples.push({ atS: Math.round((performance.now() - began) / 1000), rssMb: rssMb(d.pid) });
  return { samples, requests, errors, rate: requests / seconds };
}

/** No growth beyond noise after the warm-up: the last sample within 5% (and 2 MB) of the first after it. */
export function soakGrowth(s: Soak, warmupS: number): { growthMb: number; met: boolean } {
  const after = s.samples.filter((x) => x.atS >= warmupS);
  if (after.length < 2) return { growthMb: Number.NaN, met: false }; // too short a run to say
  const first = after[0]?.rssMb ?? Number.NaN;
  const last = after.at(-1)?.rssMb ?? Number.NaN;
  const growthMb = last - first;
  return { growthMb, met: growthMb <= Math.max(2, first * 0.05) };
}

/** Resident memory over time, as a small SVG line plot. */
export function soakSvg(s: Soak, title: string): string {
  const W = 640;
  const H = 240;
  const pad = 40;
  const maxT = Math.max(1, ...s.samples.map((x) => x.atS));
  const maxM = Math.max(1, ...s.samples.map((x) => x.rssMb)) * 1.1;
  const x = (t: number) => pad + ((W - 2 * pad) * t) / maxT;
  const y = (m: number) => H - pad - ((H - 2 * pad) * m) / maxM;
  const points = s.samples.map((p) => `${x(p.atS).toFixed(1)},${y(p.rssMb).toFixed(1)}`).join(" ");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<title>${title}</title>
<rect width="${W}" height="${H}" fill="white"/>
<text x="${pad}" y="16">${title}</text>
<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="black"/>
<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${H - pad}" stroke="black"/>
<text x="${pad}" y="${H - pad + 16}">0 s</text>
<text x="${W - pad}" y="${H - pad + 16}" text-anchor="end">${maxT} s</text>
<text x="${pad - 4}" y="${y(maxM / 1.1)}" text-anchor="end">${(maxM / 1.1).toFixed(0)} MB</text>
<text x="${pad - 4}" y="${H - pad}" text-anchor="end">0</text>
<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="${points}"/>
</svg>
`;
}
