// A quicker look than `make bench` at one scenario: builds (label=binary) side by side with the
// reference, interleaved, medians of ROUNDS runs of SECONDS each, measured as bench/run.ts does
// (wrk -t2 -c50, CPU ticks from /proc/PID/stat). Loopback only, every load bounded in time.
//   bun bench/compare.ts refused 5 3 before=/tmp/releasestatus-before after=./releasestatus
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";

const [scenario = "refused", rounds = "5", seconds = "3", ...builds] = process.argv.slice(2);
const REFERENCE = join(import.meta.dir, "reference");
const WORK = join(import.meta.dir, ".work-compare");
const CYCLE = join(WORK, "cycle.lua");

type Scenario = { env: Record<string, string>; path: string; prepare?: string; script?: string; locks?: number };
const SCENARIOS: Record<string, Scenario> = {
  refused: { env: { RS_DB: ":memory:" }, path: "/start?name=bench", prepare: "/start?name=holder" },
  "refused-file": { env: { RS_DB: join(WORK, "r.db") }, path: "/start?name=bench", prepare: "/start?name=holder" },
  status: { env: { RS_DB: join(WORK, "s.db") }, path: "/status" },
  "status-json": { env: { RS_DB: join(WORK, "s.db") }, path: "/status?format=json" },
  cycle: { env: { RS_DB: ":memory:" }, path: "/", script: CYCLE },
  "cycle-hanging-webhook": {
    env: { RS_DB: ":memory:", RS_CONFIG: process.env.HANGING_CONFIG ?? "" },
    path: "/",
    script: CYCLE,
  },
  "cycle-file": { env: { RS_DB: join(WORK, "c.db") }, path: "/", script: CYCLE },
  locks: {
    env: { RS_DB: join(WORK, "l.db"), RS_MAX_LOCKS: "2000" },
    path: "/start?name=bench",
    prepare: "/start?name=holder",
    locks: 1000,
  },
  postgres: { env: { RS_DB: process.env.RS_TEST_DB ?? "" }, path: "/start?name=bench", prepare: "/start?name=holder" },
  "cycle-postgres": { env: { RS_DB: process.env.RS_TEST_DB ?? "" }, path: "/", script: CYCLE },
};
const sc = SCENARIOS[scenario];
if (!sc || builds.length === 0) {
  console.error(`usage: bun bench/compare.ts {${Object.keys(SCENARIOS).join("|")}} ROUNDS SECONDS label=binary...`);
  process.exit(2);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};
const ticks = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return Number(f[11]) + Number(f[12]);
};
const toMs = (t: string) => {
  const m = /([\d.]+)(us|ms|s)/.exec(t);
  return m ? Number(m[1]) * ({ us: 0.001, ms: 1, s: 1000 }[m[2] as "us" | "ms" | "s"] ?? 1) : Number.NaN;
};
function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

rmSync(WORK, { recursive: true, force: true });
mkdirSync(WORK, { recursive: true });
await Bun.write(
  CYCLE,
  `local n = 0\nrequest = function()\n  n = n + 1\n  if n % 2 == 1 then return wrk.format("GET", "/start?name=bench") end\n  return wrk.format("GET", "/stop")\nend\n`,
);
const all: [string, string][] = [...builds.map((b) => b.split("=") as [string, string]), ["reference", REFERENCE]];
const results = new Map<string, { rps: number[]; cpu: number[]; p99: number[] }>();
for (let round = 0; round < Number(rounds); round++)
  for (const [label, binary] of all) {
    for (const f of ["r.db", "s.db", "c.db", "l.db"])
      for (const x of ["", "-wal", "-shm"]) rmSync(join(WORK, f + x), { force: true });
    const ours = label !== "reference";
    const port = freePort();
    const proc = Bun.spawn([binary], {
      cwd: WORK,
      env: { PATH: process.env.PATH ?? "", RS_PORT: String(port), RS_HOST: "127.0.0.1", ...(ours ? sc.env : {}) },
      stdout: "ignore",
      stderr: "ignore",
    });
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 5000; i++) {
      try {
        await (await fetch(`${url}/status`)).arrayBuffer();
        break;
      } catch {
        await Bun.sleep(2);
      }
    }
    if (ours) {
      for (let i = 0; i < (sc.locks ?? 0); i++) await (await fetch(`${url}/locks/team${i}/app/block`)).text();
      if (sc.prepare && (await (await fetch(url + sc.prepare)).text()) !== "1\n")
        throw new Error(`${sc.prepare}: not 1`);
    }
    const before = ticks(proc.pid);
    const wrk = Bun.spawn(
      ["wrk", "-t2", "-c50", `-d${seconds}s`, "--latency", ...(sc.script ? ["-s", sc.script] : []), url + sc.path],
      { stdout: "pipe" },
    );
    const out = await new Response(wrk.stdout).text();
    await wrk.exited;
    const cpu = (ticks(proc.pid) - before) / 100;
    if (ours && sc.prepare) await (await fetch(url + sc.prepare.replace(/start\?.*$/, "stop"))).text(); // a shared database outlives us
    proc.kill("SIGKILL");
    await proc.exited;
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
    const r = results.get(label) ?? { rps: [], cpu: [], p99: [] };
    results.set(label, r);
    r.rps.push(Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0));
    r.cpu.push((cpu * 1e6) / requests);
    r.p99.push(toMs(/ 99%\s+(\S+)/.exec(out)?.[1] ?? ""));
  }
const ref = results.get("reference");
for (const [label, r] of results) {
  const x = (k: "rps" | "cpu" | "p99") => (median(r[k]) / median(ref?.[k] ?? [])).toFixed(2);
  console.log(
    `${scenario} ${label}: ${median(r.rps).toFixed(0)} req/s (${x("rps")}x), CPU ${median(r.cpu).toFixed(1)} µs/request (${x("cpu")}x), p99 ${median(r.p99).toFixed(2)} ms (${x("p99")}x)`,
  );
}
rmSync(WORK, { recursive: true, force: true });
