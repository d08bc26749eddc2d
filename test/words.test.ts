// The words, against the binary: status that lists everything that stops a start (text a script can
// grep, JSON a program can switch on), and history that names who ended each release.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configFile, type Daemon, daemonsPerTest, freshDb, runBinary, tempDir, until } from "./daemon.ts";

const started = daemonsPerTest();
// A store of its own for each daemon: on PostgreSQL (RS_TEST_DB) daemons would otherwise share one.
const daemon = async (env: Record<string, string> = {}) => started({ RS_DB: await freshDb(), ...env });
const HOUR = 3_600_000;
const minute = (t: number) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
const prodFrozen = () =>
  configFile(
    `[[freeze]]\nreason = "weekend"\nlocks = ["prod"]\nfrom = "${minute(Date.now() - HOUR)}"\nuntil = "${minute(Date.now() + 2 * HOUR)}"\n`,
  );
const lines = async (d: Daemon, path: string) => (await d.body(path)).trimEnd().split("\n");
const stoppedBy = async (d: Daemon, lock: string) =>
  ((await (await d.get(`/locks/${lock}/status?format=json`)).json()).stoppedBy as { why: string }[]).map((s) => s.why);

describe("status words list everything that stops a start; idle: only when nothing does", () => {
  test("a lock held by a release below it begins held:, not idle:", async () => {
    const d = await daemon();
    await d.body("/locks/prod/eu/start?name=sion&reason=v2");
    const [first, ...rest] = await lines(d, "/locks/prod/status");
    expect(first).toMatch(/^held: release #1 by sion \(v2\) on prod\/eu running since \S+Z$/);
    expect(rest).toEqual([]); // no idle: line, which a script's ^idle would match
    expect(await stoppedBy(d, "prod")).toEqual(["held"]);
  });

  test("a blocked, frozen lock that nothing runs on says blocked:, then frozen: (the rules' order), and no idle:", async () => {
    const d = await daemon({ RS_CONFIG: prodFrozen() });
    await d.body("/locks/prod/block?name=ana&reason=audit");
    const text = await lines(d, "/locks/prod/status");
    expect(text.map((l) => l.split(":")[0])).toEqual(["blocked", "frozen"]);
    expect(await stoppedBy(d, "prod")).toEqual(["blocked", "frozen"]);
  });

  test("a free lock says idle: first and stoppedBy is empty", async () => {
    const d = await daemon();
    expect(await d.body("/status")).toBe("idle: no release is running\n");
    expect(await stoppedBy(d, "default")).toEqual([]);
  });

  test("a running lock keeps running: first, then blocked: and frozen: (the original's lines unchanged)", async () => {
    const d = await daemon({ RS_CONFIG: prodFrozen() });
    await d.body("/locks/prod/start?name=sion&override=hotfix");
    await d.body("/block?name=ana&reason=holidays");
    const text = await lines(d, "/locks/prod/status");
    expect(text.map((l) => l.split(":")[0])).toEqual(["running", "blocked", "frozen"]);
    expect(await stoppedBy(d, "prod")).toEqual(["running", "blocked", "frozen"]);
  });

  test("/locks says, on the lock's one line, everything that stops its start", async () => {
    const d = await daemon({ RS_CONFIG: prodFrozen() });
    await d.body("/locks/prod/start?name=sion&override=hotfix");
    await d.body("/locks/prod/block?name=ana&reason=audit");
    await d.body("/locks/staging/eu/start?name=bob");
    await d.body("/locks/staging/block?name=carol");
    const text = await d.body("/locks");
    expect(text).toMatch(
      /^running: prod: release #1 by sion on prod running since \S+, for \d+s; blocked: releasing on prod blocked by ana since \S+: audit; frozen: releasing on prod is frozen until .*\(weekend\)$/m,
    );
    expect(text).toMatch(
      /^held: staging: release #2 by bob on staging\/eu running since \S+; blocked: releasing on staging blocked by carol since \S+$/m,
    );
    expect(text).toMatch(
      /^running: staging\/eu: release #2 by bob on staging\/eu running since \S+, for \d+s; blocked: /m,
    );
  });

  test("each /locks line begins with the word its lock's status begins with, then the lock: grep '^idle:' works on both", async () => {
    const d = await daemon({ RS_CONFIG: prodFrozen(), RS_LOCKS: "prod,prod/eu,qa,staging,staging/eu,free" });
    await d.body("/locks/prod/eu/start?name=sion&override=hotfix"); // prod/eu running, prod held (and frozen)
    await d.body("/locks/qa/block?name=ana"); // qa blocked; staging, staging/eu and free are idle
    const text = await lines(d, "/locks");
    expect(text.map((l) => l.split(": ").slice(0, 2).join(": "))).toEqual([
      "idle: free",
      "held: prod",
      "running: prod/eu",
      "blocked: qa",
      "idle: staging",
      "idle: staging/eu",
    ]);
    for (const line of text) {
      const [word, lock] = line.split(": ");
      expect((await lines(d, `/locks/${lock}/status`))[0]?.split(": ")[0]).toBe(word as string);
    }
  });

  test("/locks lists a block of the root, which blocks every lock, first, as the lock /", async () => {
    const d = await daemon();
    await d.body("/block?name=ana&reason=holidays");
    expect(await lines(d, "/locks")).toEqual([
      expect.stringMatching(/^blocked: \/: releasing blocked by ana since \S+: holidays$/),
      expect.stringMatching(/^blocked: default: releasing blocked by ana since \S+: holidays$/),
    ]);
  });

  test("releasestatus status lists the other locks with what stops them", async () => {
    const d = await daemon({ RS_CONFIG: prodFrozen() });
    await d.body("/locks/prod/eu/start?name=sion&override=hotfix");
    const { stdout, code } = await runBinary(["status", "--url", d.url]);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^held: prod: release #1 by sion on prod\/eu .*; frozen: releasing on prod is frozen/m);
  });
});

describe("a name is kept exactly as written and never decides who may stop or unblock", () => {
  test("/stop?name=A after /start?name=a stops the release, as the original's /stop does for anyone, and history keeps each spelling", async () => {
    const d = await daemon();
    expect(await d.body("/start?name=a")).toBe("1\n");
    expect(await d.body("/stop?name=A")).toBe("1\n");
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.map((e: { kind: string; name: string }) => `${e.kind} ${e.name}`)).toEqual([
      "stopped A",
      "started a",
    ]);
  });

  test("/unblock?name=ANA lifts the block /block?name=ana set, and the block was shown as ana", async () => {
    const d = await daemon();
    await d.body("/block?name=ana&reason=audit");
    expect((await (await d.get("/status?format=json")).json()).block.name).toBe("ana");
    expect(await d.body("/unblock?name=ANA")).toBe("1\n");
    expect((await (await d.get("/status?format=json")).json()).blocked).toBe(false);
  });
});

describe("history names who ended each release", () => {
  const stoppedLine = async (d: Daemon) =>
    ((await (await d.get("/history?format=json")).json()).events as { kind: string; message: string }[]).find(
      (e) => e.kind === "stopped",
    )?.message;

  test("a stop by id without a name is credited to the release's holder, whose script was given the id", async () => {
    const d = await daemon();
    const id = (await d.get("/start?name=sion&reason=v2")).headers.get("x-release-id");
    expect(await d.body(`/stop?id=${id}`)).toBe("1\n");
    expect(await stoppedLine(d)).toBe(`release #${id} stopped by sion`);
  });

  test("a stop without an id nor a name stays an unknown user's; a named stop is its namer's", async () => {
    const d = await daemon();
    await d.body("/start?name=sion");
    await d.body("/stop");
    expect(await stoppedLine(d)).toBe("release #1 stopped by an unknown user");
    const id = (await d.get("/start?name=sion")).headers.get("x-release-id");
    await d.body(`/stop?id=${id}&name=ana`);
    expect(await stoppedLine(d)).toBe("release #2 stopped by ana");
  });

  test("releasestatus run stops with its --name", async () => {
    const d = await daemon();
    const ran = await runBinary(["run", "--url", d.url, "--name", "alice", "--", "true"], { USER: "someone-else" });
    expect(ran.code).toBe(0);
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.find((e: { kind: string }) => e.kind === "stopped")).toMatchObject({ name: "alice" });
  });
});

// The curl script as docs/run.md (linked from the README) has it, pointed at the test's daemon.
const curlScript = (url: string) => {
  const readme = readFileSync(join(import.meta.dir, "..", "docs", "run.md"), "utf8");
  const body = readme.split("## A deploy script with curl alone")[1]?.split("```sh\n")[1]?.split("```")[0] ?? "";
  expect(body).toContain("./deploy.sh staging");
  return body.replace(/^RS=.*$/m, `RS=${url}`);
};

describe("the README's curl script says while it waits, and what it gave back", () => {
  // Deploying with `true`.
  const script = (url: string) => curlScript(url).replace("./deploy.sh staging", "true");

  test("while another release holds the lock it prints what holds it and the line; at the end, what it gave back", async () => {
    const d = await daemon();
    await d.body("/start?name=first");
    await d.body("/stop");
    await d.body("/start?name=sion&reason=v1");
    const dir = tempDir();
    writeFileSync(join(dir, "deploy"), script(d.url));
    const out = join(dir, "out");
    // Output to a file: the script's own sleeps may outlive it, holding a pipe open.
    const proc = Bun.spawn(["sh", join(dir, "deploy")], {
      env: { PATH: process.env.PATH ?? "", USER: "bob" },
      stdout: Bun.file(out),
      stderr: Bun.file(join(dir, "err")),
    });
    const said = () => (existsSync(out) ? readFileSync(out, "utf8") : "");
    await until(async () => said().includes("waiting: 1. bob"), "the script to say it waits");
    expect(said()).toContain("running: release #2 by sion (v1) running since");
    expect(said()).toMatch(/usually: takes \d+s, expected to end around \S+Z/);
    await d.body("/stop?name=sion");
    expect(await proc.exited).toBe(0);
    expect(said()).toMatch(/gave back release 3\n$/);
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events[0]).toMatchObject({ kind: "stopped", releaseId: 3, name: "bob" });
  });
});

describe("the curl script of docs/run.md, stopped by Ctrl-C, SIGTERM or kill -9, leaves no loop and holds nothing", () => {
  // The processes left in a process group but sleeps (a loop's last sleep may outlive it; it renews nothing).
  const leftIn = async (group: number) => {
    const ps = Bun.spawn(["ps", "-eo", "pgid=,args="], { stdout: "pipe" });
    return (await new Response(ps.stdout).text())
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter(([pgid, command]) => Number(pgid) === group && command !== "sleep")
      .map((l) => l.slice(1).join(" "));
  };
  const statusOf = async (d: Daemon) => (await d.get("/status?format=json")).json();

  // The script in a group of its own, as a terminal gives a job, so that Ctrl-C (SIGINT to the group) reaches each
  // process; its deploy says it runs, then sleeps. `edit` changes the script's text (shorter sleeps and leases).
  async function launch(d: Daemon, edit: (script: string) => string = (s) => s, deploy = DEPLOY) {
    const dir = tempDir();
    writeFileSync(join(dir, "deploy"), edit(curlScript(d.url)));
    writeFileSync(join(dir, "deploy.sh"), deploy, { mode: 0o755 });
    const proc = Bun.spawn(["sh", join(dir, "deploy")], {
      cwd: dir,
      detached: true,
      env: { PATH: process.env.PATH ?? "", USER: "bob" },
      stdout: Bun.file(join(dir, "out")),
      stderr: Bun.file(join(dir, "err")),
    });
    const deploying = () => until(async () => existsSync(join(dir, "deploying")), "the deploy to run");
    const said = () => readFileSync(join(dir, "out"), "utf8");
    const end = () => {
      try {
        process.kill(-proc.pid, "SIGKILL"); // what the test started: a leftover sleep, or all of it when it failed
      } catch {}
    };
    return { proc, dir, deploying, said, end };
  }
  const DEPLOY = '#!/bin/sh\ntouch "$(dirname "$0")/deploying"\nexec sleep 600\n';

  for (const signal of ["SIGINT", "SIGTERM"] as const)
    test(`${signal} to the script's process group while it deploys: no loop is left, and the release is stopped`, async () => {
      const d = await daemon();
      const { proc, deploying, said, end } = await launch(d);
      try {
        await deploying();
        expect((await statusOf(d)).release).toMatchObject({ name: "bob" });
        process.kill(-proc.pid, signal);
        await proc.exited;
        await until(async () => (await leftIn(proc.pid)).length === 0, "every loop of the script to end");
        expect((await statusOf(d)).running).toBe(false);
        const { events } = await (await d.get("/history?format=json")).json();
        expect(events[0]).toMatchObject({ kind: "stopped", name: "bob" });
        expect(said()).toMatch(/gave back release \d+\n$/);
      } finally {
        end();
      }
    });

  test("SIGTERM to the script alone (kill PID, docker stop) while it waits in line: it leaves the line at once", async () => {
    const d = await daemon();
    await d.body("/start?name=sion");
    const { proc, end } = await launch(d);
    try {
      await until(async () => (await statusOf(d)).queue.length === 1, "the script to wait in line");
      process.kill(proc.pid, "SIGTERM");
      expect(await proc.exited).toBe(143);
      await until(async () => (await statusOf(d)).queue.length === 0, "the script's place in line to be given up");
      expect(await d.body("/stop?name=sion")).toBe("1\n");
      expect((await statusOf(d)).running).toBe(false); // nobody was given the release on the script's behalf
    } finally {
      end();
    }
  });

  test("SIGTERM to the script alone while it deploys: the release is kept until the deploy has stopped, then given back", async () => {
    const d = await daemon();
    // A deploy that, told to stop, cleans up for a few seconds first.
    const slowToStop =
      '#!/bin/sh\ncd "$(dirname "$0")"\ntrap \'touch cleaning; sleep 3; touch cleaned; exit 143\' TERM\ntouch deploying\nsleep 600 & wait $!\n';
    const { proc, dir, deploying, end } = await launch(d, undefined, slowToStop);
    try {
      await deploying();
      process.kill(proc.pid, "SIGTERM");
      await until(async () => existsSync(join(dir, "cleaning")), "the deploy to be told to stop");
      expect((await statusOf(d)).running).toBe(true); // still the script's while its deploy cleans up
      expect(await proc.exited).toBe(143);
      expect(existsSync(join(dir, "cleaned"))).toBe(true);
      expect((await statusOf(d)).running).toBe(false);
    } finally {
      end();
    }
  });

  test("kill -9 of the script while it waits: its status loop ends by itself", async () => {
    const d = await daemon();
    await d.body("/start?name=sion");
    const { proc, said, end } = await launch(d, (s) => s.replace("sleep 30", "sleep 1"));
    try {
      await until(async () => said().includes("waiting, as of"), "the script to say it waits");
      process.kill(proc.pid, "SIGKILL");
      await proc.exited;
      // The wait's curl is left (and may be granted, until the lease ends: docs/run.md says so); no loop is.
      await until(async () => (await leftIn(proc.pid)).every((p) => p.startsWith("curl")), "the status loop to end");
    } finally {
      end();
    }
  });

  test("SIGTERM to the script alone while it deploys: the deploy is ended and the release given back", async () => {
    const d = await daemon();
    const { proc, deploying, said, end } = await launch(d);
    try {
      await deploying();
      process.kill(proc.pid, "SIGTERM");
      expect(await proc.exited).toBe(143);
      await until(async () => (await leftIn(proc.pid)).length === 0, "the deploy and every loop to end");
      expect((await statusOf(d)).running).toBe(false);
      expect(said()).toMatch(/gave back release \d+\n$/);
    } finally {
      end();
    }
  });

  test("kill -9 of the script while it deploys: its renew loop ends by itself, and the lease runs out", async () => {
    const d = await daemon();
    // Renewing every second with a lease of 3 s, so that the test does not wait minutes.
    const short = (s: string) => s.replace("sleep 40", "sleep 1").replaceAll("ttl=120", "ttl=3");
    const { proc, deploying, end } = await launch(d, short);
    try {
      await deploying();
      const { release } = await statusOf(d);
      await until(async () => (await statusOf(d)).release?.expiresAt !== release.expiresAt, "a renewal");
      process.kill(proc.pid, "SIGKILL");
      await proc.exited;
      await until(async () => (await leftIn(proc.pid)).length === 0, "the renew loop to end by itself");
      await until(async () => (await statusOf(d)).running === false, "the lease to run out");
    } finally {
      end();
    }
  });
});
