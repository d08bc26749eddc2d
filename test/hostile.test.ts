// Only the right people change the release state, and hostile input changes nothing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { type Daemon, daemonsPerTest, runBinary, startDaemon, tempDir } from "./daemon.ts";

const TOKEN = "s3cret-token-for-tests";
const MUTATIONS = ["/start", "/stop", "/block", "/unblock", "/renew?id=1&ttl=60"];
const READING = ["/status", "/history", "/healthz"];

const daemon = daemonsPerTest();
const bearer = (token: string) => ({ headers: { Authorization: `Bearer ${token}` } });

describe("a token (RS_TOKEN)", () => {
  test("each state change is refused with 401 and body 0 without the right token", async () => {
    const d = await daemon({ RS_TOKEN: TOKEN });
    const wrongs: [string, RequestInit][] = [
      ["no token", {}],
      ["a wrong token", bearer("guess")],
      ["a token differing in the last character", bearer(`${TOKEN.slice(0, -1)}X`)],
      ["the token without Bearer", { headers: { Authorization: TOKEN } }],
    ];
    for (const path of MUTATIONS)
      for (const [what, init] of wrongs) {
        const res = await d.get(path, init);
        expect({ path, what, status: res.status }).toEqual({ path, what, status: 401 });
        expect(res.headers.get("www-authenticate")).toBe("Bearer");
        expect(await res.text()).toBe("0\n");
      }
    expect((await (await d.get("/status?format=json")).json()).running).toBe(false);
  });

  test("the right token is accepted on each state change", async () => {
    const d = await daemon({ RS_TOKEN: TOKEN });
    const auth = bearer(TOKEN);
    const id = (await d.get("/start?ttl=60", auth)).headers.get("x-release-id");
    expect(await d.body(`/renew?id=${id}&ttl=60`, auth)).toBe("1\n");
    expect(await d.body("/stop", auth)).toBe("1\n");
    expect(await d.body("/block", auth)).toBe("1\n");
    expect(await d.body("/unblock", { ...auth, method: "POST" })).toBe("1\n");
  });

  test("reading stays open without a token", async () => {
    const d = await daemon({ RS_TOKEN: TOKEN });
    for (const path of READING) expect((await d.get(path)).status).toBe(200);
  });

  test("the token never appears in the log or in answers", async () => {
    const d = await daemon({ RS_TOKEN: TOKEN, RS_LOG_FORMAT: "json" });
    await d.body("/start", bearer("wrong"));
    await d.body("/start", bearer(TOKEN));
    const status = await d.body("/status?format=json");
    await d.stop();
    expect(d.output()).not.toContain(TOKEN);
    expect(status).not.toContain(TOKEN);
  });

  test("without a token the daemon says once at start-up that changes are open to anyone", async () => {
    const d = await daemon();
    expect(d.output().match(/no token is set/g)).toHaveLength(1);
  });

  test("RS_TOKEN_FILE is read once, its trailing newline dropped", async () => {
    const file = join(tempDir(), "token");
    writeFileSync(file, `${TOKEN}\n`);
    const d = await daemon({ RS_TOKEN_FILE: file });
    writeFileSync(file, "changed-later\n");
    expect(await d.body("/block", bearer(TOKEN))).toBe("1\n");
    expect((await d.get("/unblock", bearer("changed-later"))).status).toBe(401);
  });

  test("an unreadable token file stops start-up with a clear message", async () => {
    const missing = await runBinary([], { RS_PORT: "1", RS_TOKEN_FILE: "/nonexistent/token" });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read RS_TOKEN_FILE=/nonexistent/token (ENOENT)");
    const dir = tempDir();
    const notAFile = await runBinary([], { RS_PORT: "1", RS_TOKEN_FILE: dir });
    expect(notAFile.code).toBe(2);
    expect(notAFile.stderr).toContain(`cannot read RS_TOKEN_FILE=${dir} (EISDIR)`);
  });

  test("an empty token is refused at start-up", async () => {
    const file = join(tempDir(), "token");
    writeFileSync(file, "\n");
    chmodSync(file, 0o600);
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_TOKEN_FILE: file });
    expect(code).toBe(2);
    expect(stderr).toContain("the token is empty");
    expect(readFileSync(file, "utf8")).toBe("\n");
  });
});

describe("browsers", () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await startDaemon({ RS_TOKEN: TOKEN });
  });
  afterAll(async () => {
    await d.stop();
  });

  test("a change sent cross-site is refused with 403, token or not", async () => {
    for (const path of MUTATIONS) {
      const crossSite = await d.get(path, {
        headers: { "Sec-Fetch-Site": "cross-site", Authorization: `Bearer ${TOKEN}` },
      });
      expect(crossSite.status).toBe(403);
      expect(await crossSite.text()).toBe("0\n");
      const foreign = await d.get(path, {
        headers: { Origin: "https://evil.example", Authorization: `Bearer ${TOKEN}` },
      });
      expect(foreign.status).toBe(403);
    }
    expect((await (await d.get("/status?format=json")).json()).running).toBe(false);
  });

  test("a change from the daemon's own page (same origin) is accepted", async () => {
    const res = await d.get("/block", {
      method: "POST",
      headers: { "Sec-Fetch-Site": "same-origin", Origin: d.url, Authorization: `Bearer ${TOKEN}` },
    });
    expect(await res.text()).toBe("1\n");
    await d.body("/unblock", bearer(TOKEN));
  });

  test("answers tell browsers not to sniff or cache", async () => {
    const res = await d.get("/status");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    expect(res.headers.get("cache-control")).toBe("no-store");
  });
});

describe("input limits", () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await startDaemon();
  });
  afterAll(async () => {
    await d.stop();
  });

  test("a name or reason of 200 characters is kept; 201 is invalid", async () => {
    const ok = "ö".repeat(200);
    expect(await d.body(`/block?reason=${encodeURIComponent(ok)}`)).toBe("1\n");
    await d.body("/unblock");
    const res = await d.get(`/block?name=${"a".repeat(201)}`);
    expect(res.status).toBe(400);
    expect(res.headers.get("x-reason")).toBe("name is longer than 200 characters: shorten it");
  });

  test("control characters and invalid UTF-8 are refused, not written anywhere", async () => {
    const before = await d.body("/history");
    for (const bad of ["%00", "%1B%5B31m", "a%0Db", "%C3%28", "%ED%A0%80"]) {
      const res = await d.get(`/start?name=${bad}`);
      expect(res.status).toBe(400);
      expect(res.headers.get("x-reason-code")).toBe("invalid");
    }
    expect(await d.body("/history")).toBe(before);
  });

  test("an over-long URL is 414 and changes nothing", async () => {
    const res = await d.get(`/start?name=x&pad=${"a".repeat(9000)}`);
    expect(res.status).toBe(414);
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("an over-large body is refused with 413", async () => {
    const res = await d.get("/start", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: `name=${"a".repeat(100_000)}`,
    });
    expect(res.status).toBe(413);
    expect(await d.body("/status")).toStartWith("idle");
  });

  test("over-long headers are refused with 431", async () => {
    const res = await d.get("/start", { headers: { "X-Padding": "a".repeat(20_000) } });
    expect(res.status).toBe(431);
    expect(await d.body("/status")).toStartWith("idle");
  });
});

// ---- the fuzz test ----

/** A tiny seeded PRNG (mulberry32), so a failure can be replayed. */
function prng(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Sent = { path: string; status: number | null; body: string; wellFormed: boolean };

/** Sends raw bytes over one connection and reads the status line and body; null when the server closed. */
function rawRequest(port: number, bytes: Buffer, slowMs = 0): Promise<{ status: number | null; body: string }> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let data = "";
    const done = () => {
      socket.destroy();
      const status = /^HTTP\/1\.1 (\d{3})/.exec(data)?.[1];
      resolve({ status: status ? Number(status) : null, body: data.split("\r\n\r\n").slice(1).join("\r\n\r\n") });
    };
    socket.setTimeout(20_000, done);
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1");
    });
    socket.on("end", done);
    socket.on("error", done);
    socket.on("connect", async () => {
      if (slowMs === 0) return void socket.write(bytes);
      for (let i = 0; i < bytes.length; i += 7) {
        socket.write(bytes.subarray(i, i + 7));
        await Bun.sleep(slowMs);
      }
    });
  });
}

function randomRequest(r: () => number): { bytes: Buffer; path: string; wellFormed: boolean; completes: boolean } {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const paths = [
    "/start",
    "/stop",
    "/block",
    "/unblock",
    "/renew",
    "/status",
    "/history",
    "/healthz",
    "/",
    "/x",
    "//start",
    "/locks",
    "/locks/prod/start",
    "/locks/prod/eu/start",
    "/locks/prod/stop",
    "/locks/prod/eu/block",
    "/locks/prod/unblock",
    "/locks/prod/eu/status",
    "/locks/prod/history",
    "/locks//start",
    "/locks/PROD/start",
    "/locks/prod%2Feu/start",
    "/locks/../start",
    "/locks/prod/",
    "/locks/prod",
  ];
  const keys = ["name", "reason", "ttl", "wait", "id", "format", "limit", "junk", "", "name"];
  const values = [
    () => "sion",
    () => "%FF",
    () => "%",
    () => "%zz",
    () => "%00",
    () => "%E2%82",
    () => encodeURIComponent("Siôn 😀"),
    () => "a".repeat(Math.floor(r() * 400)),
    () => String(Math.floor(r() * 5)),
    () => "-1",
    () => "1e9",
    () => "99999999999999999999",
    () => "json",
    () => "+".repeat(10),
    () => "%0A",
  ];
  const query = Array.from({ length: Math.floor(r() * 4) }, () => `${pick(keys)}=${pick(values)()}`).join("&");
  let path = pick(paths) + (query ? `?${query}` : "");
  if (r() < 0.05) path = `/${"z".repeat(Math.floor(r() * 12_000))}`;
  let method = pick(["GET", "GET", "GET", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]);
  let wellFormed = true;
  let completes = true;
  if (r() < 0.04) {
    method = pick(["G\0T", "GE T", "", "\x16\x03\x01"]);
    wellFormed = false;
  }
  if (r() < 0.03) {
    path = `/st\0art${path}`;
    wellFormed = false;
  }
  const headers = ["Host: 127.0.0.1", "Connection: close"];
  if (r() < 0.1) headers.push(`X-Long: ${"h".repeat(Math.floor(r() * 30_000))}`);
  if (r() < 0.1) headers.push(pick(["Origin: https://evil.example", "Sec-Fetch-Site: cross-site", "Origin: null"]));
  if (r() < 0.1) headers.push("Accept: application/json");
  let body = "";
  if (method === "POST" && r() < 0.5) {
    headers.push("Content-Type: application/x-www-form-urlencoded");
    body = r() < 0.1 ? "n".repeat(100_000) : `name=${pick(values)()}&reason=${pick(values)()}`;
    completes = r() >= 0.05; // else the body is shorter than announced and never completes
    headers.push(`Content-Length: ${completes ? body.length : body.length + 50}`);
  }
  const head = `${method} ${path} HTTP/1.1\r\n${headers.join("\r\n")}\r\n\r\n`;
  const bytes = Buffer.concat([Buffer.from(head, "latin1"), Buffer.from(body, "latin1")]);
  return { bytes, path, wellFormed, completes };
}

const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;

describe("fuzzing the compiled binary", () => {
  test("6000 random and malformed requests: alive, no 5xx, bounded memory, state exactly what was acknowledged", async () => {
    const d = await daemon({ RS_HISTORY_LIMIT: "1000000" });
    const r = prng(20261127);
    const sent: Sent[] = [];
    const rssAfter: number[] = [];
    // Slow partial requests hold connections open throughout; the daemon must keep serving others.
    const slow = Array.from({ length: 20 }, (_, i) =>
      rawRequest(d.port, Buffer.from(`GET /start?name=slow${i} HTTP/1.1\r\nHost: x\r\n`), 400),
    );
    // Requests that never complete (a body shorter than announced) are left to the daemon's idle timeout.
    const unfinished: Promise<void>[] = [];
    for (let round = 0; round < 2; round++) {
      for (let batch = 0; batch < 150; batch++) {
        const batchDone: Promise<void>[] = [];
        for (let i = 0; i < 20; i++) {
          const q = randomRequest(r);
          const answered = rawRequest(d.port, q.bytes).then((a) => {
            sent.push({ path: q.path, status: a.status, body: a.body, wellFormed: q.wellFormed });
          });
          (q.completes ? batchDone : unfinished).push(answered);
        }
        await Promise.all(batchDone);
      }
      Bun.gc?.(true);
      rssAfter.push(rss(d.proc.pid));
    }
    await Promise.all([...unfinished, ...slow]);
    expect(d.proc.exitCode).toBeNull();
    expect(await d.body("/healthz")).toBe("ok\n");
    const serverErrors = sent.filter((s) => s.wellFormed && s.status !== null && s.status >= 500);
    expect(serverErrors.map((s) => `${s.status} ${s.path.slice(0, 80)}`)).toEqual([]);
    // Bun's own parser answers a request line it cannot parse (a NUL byte, no version) with 400 or 505.
    const parserRejects = sent.filter((s) => !s.wellFormed && s.status !== null && s.status >= 500);
    for (const s of parserRejects) expect(s.status).toBe(505);
    expect((rssAfter[1] ?? 0) - (rssAfter[0] ?? 0)).toBeLessThan(24);

    // Every 1 is exactly one event in the history, and nothing else changed the state.
    // What a path did: /locks/NAME/ACTION and the original's /ACTION alike.
    const actionOf = (path: string) => {
      const p = path.split("?")[0] ?? "";
      return p.startsWith("/locks/") ? `/${p.slice(p.lastIndexOf("/") + 1)}` : p;
    };
    const ones = (action: string) =>
      sent.filter((s) => s.status === 200 && /^(1\n|\{"ok":true)/.test(s.body) && actionOf(s.path) === action).length;
    const { events } = await (await d.get("/history?limit=1000&format=json")).json();
    const history = events as { kind: string; lock: string }[];
    const count = (kind: string) => history.filter((e) => e.kind === kind).length;
    expect(history.length).toBeLessThan(1000);
    expect(count("started")).toBe(ones("/start"));
    expect(count("stopped")).toBe(ones("/stop"));
    expect(count("blocked")).toBe(ones("/block"));
    expect(count("unblocked")).toBe(ones("/unblock"));
    expect(count("renewed")).toBe(ones("/renew"));
    const status = await (await d.get("/status?format=json")).json();
    const latest = (lock: string, ...kinds: string[]) =>
      history.findIndex((e) => e.lock === lock && kinds.includes(e.kind));
    expect(status.lastReleaseId).toBe(count("started"));
    const lastRelease = latest("default", "started", "stopped", "expired");
    const isBlocked = (lock: string) => history[latest(lock, "blocked", "unblocked")]?.kind === "blocked";
    expect(status.running).toBe(lastRelease >= 0 && history[lastRelease]?.kind === "started");
    expect(status.blocked).toBe(isBlocked("") || isBlocked("default")); // the root's block, or the default lock's

    const by = (f: (s: Sent) => boolean) => sent.filter(f).length;
    console.log(
      `fuzz: ${sent.length} requests (${by((s) => !s.wellFormed)} malformed, 20 slow partial), ` +
        `${by((s) => s.status === 200)} answered 200, ${by((s) => s.status !== null && s.status >= 400 && s.status < 500)} 4xx, ` +
        `${parserRejects.length} rejected by Bun's parser with 505, ${by((s) => s.status === null)} closed without an answer; ` +
        `${history.length} state changes; RSS ${rssAfter.map((m) => m.toFixed(1)).join(" -> ")} MB`,
    );
  }, 120_000);
});
