// `releasestatus run` and `status`: the compiled binary as both server and client.
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  BINARY,
  configFile,
  type Daemon,
  daemonsPerTest,
  freePort,
  historyKinds,
  statusOf,
  tempDir,
  until,
} from "./daemon.ts";

const server = daemonsPerTest();

/** Starts `releasestatus ARGS` against `d`; the caller awaits `done`. With `detached`, run gets a session and process group of its own, as a shell gives a job. */
function client(d: Daemon | null, args: string[], env: Record<string, string> = {}, detached = false) {
  const proc = Bun.spawn([BINARY, ...args], {
    env: { PATH: process.env.PATH ?? "", USER: "tester", ...(d ? { RS_URL: d.url } : {}), ...env },
    detached,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const done = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]).then(
    ([stdout, stderr, code]) => ({ stdout, stderr, code }),
  );
  return { proc, done };
}
const status = statusOf;
const kinds = historyKinds;

describe("releasestatus run", () => {
  test("runs a command that succeeds while holding the release, with RS_RELEASE_ID, then stops it", async () => {
    const d = await server();
    const out = join(tempDir(), "id");
    const { done } = client(d, ["run", "--reason", "v2.3.1", "--", "sh", "-c", `echo "$RS_RELEASE_ID" > ${out}`]);
    const { code } = await done;
    expect(code).toBe(0);
    expect(readFileSync(out, "utf8")).toBe("1\n");
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.map((e: { kind: string }) => e.kind)).toEqual(["stopped", "started"]);
    expect(events[1]).toMatchObject({ name: "tester", reason: "v2.3.1", releaseId: 1 });
    expect((await status(d)).running).toBe(false);
  });

  test("a command that fails gives back its own exit code, and the release is stopped", async () => {
    const d = await server();
    const { code } = await client(d, ["run", "--", "sh", "-c", "exit 3"]).done;
    expect(code).toBe(3);
    expect((await status(d)).running).toBe(false);
  });

  test("SIGINT to the wrapper is forwarded to the command, and the release is stopped", async () => {
    const d = await server();
    const pidFile = join(tempDir(), "pid");
    const c = client(d, ["run", "--", "sh", "-c", `echo $$ > ${pidFile}; exec sleep 30`]);
    await until(async () => pidIn(pidFile) > 0, "the command to start");
    c.proc.kill("SIGINT");
    const { code } = await c.done;
    expect(code).toBe(130); // sleep died of SIGINT
    expect((await status(d)).running).toBe(false);
    expect((await kinds(d))[0]).toBe("stopped");
  });

  test("a command killed outright still has its release stopped", async () => {
    const d = await server();
    const pidFile = join(tempDir(), "pid");
    const c = client(d, ["run", "--", "sh", "-c", `echo $$ > ${pidFile}; exec sleep 30`]);
    await until(
      async () => (await status(d)).running && existsSync(pidFile) && readFileSync(pidFile, "utf8").length > 0,
      "the command",
    );
    process.kill(Number(readFileSync(pidFile, "utf8")), "SIGKILL");
    expect((await c.done).code).toBe(137);
    expect((await status(d)).running).toBe(false);
  });

  test("a command that outlives several lease periods keeps the release, renewed", async () => {
    const d = await server();
    const { code } = await client(d, ["run", "--ttl", "2", "--", "sleep", "3"]).done;
    expect(code).toBe(0);
    const history = await kinds(d);
    expect(history).not.toContain("expired");
    expect(history.filter((k: string) => k === "renewed").length).toBeGreaterThanOrEqual(3);
    expect(history[0]).toBe("stopped");
  });

  test("a lease stopped on the server by its id: the command gets SIGTERM and run exits 70", async () => {
    const d = await server();
    const marker = join(tempDir(), "term");
    const c = client(d, [
      "run",
      "--ttl",
      "3",
      "--",
      "sh",
      "-c",
      `trap 'echo got-sigterm > ${marker}; exit 143' TERM; sleep 30 >/dev/null 2>&1 & wait`,
    ]);
    await until(async () => (await status(d)).running, "the release to start");
    await d.body("/stop?id=1");
    const { code, stderr } = await c.done;
    expect(code).toBe(70);
    expect(stderr).toContain("lost release #1");
    expect(readFileSync(marker, "utf8")).toBe("got-sigterm\n");
  });

  test("a server unreachable until the lease would have ended: the command gets SIGTERM", async () => {
    const d = await server();
    const running = join(tempDir(), "running");
    const c = client(d, ["run", "--ttl", "2", "--", "sh", "-c", `touch ${running}; exec sleep 30`]);
    // The command runs once run has heard its 1 (the server shows the release a moment before it answers).
    await until(async () => existsSync(running), "the command to run");
    d.proc.kill("SIGSTOP"); // the server hangs: renewals time out
    const { code, stderr } = await c.done;
    d.proc.kill("SIGCONT");
    expect(code).toBe(70);
    expect(stderr).toContain("no renewal reached the server for 2s");
  });

  test("a second run while one holds the release exits 75 at once, with the reason", async () => {
    const d = await server();
    await d.body("/start?name=sion");
    const { code, stderr } = await client(d, ["run", "--", "true"]).done;
    expect(code).toBe(75);
    expect(stderr).toMatch(/^releasestatus run: not releasing \(running\): release #1 by sion running since .+\n$/);
  });

  test("with --wait a second run waits its turn, then runs", async () => {
    const d = await server();
    const first = client(d, ["run", "--name", "first", "--", "sleep", "1"]);
    await until(async () => (await status(d)).running, "the first release");
    const second = client(d, ["run", "--name", "second", "--wait", "30", "--", "true"]);
    expect((await first.done).code).toBe(0);
    expect((await second.done).code).toBe(0);
    const { events } = await (await d.get("/history?format=json")).json();
    const starts = events.filter((e: { kind: string }) => e.kind === "started").map((e: { name: string }) => e.name);
    expect(starts).toEqual(["second", "first"]);
  });

  test("a server that cannot be reached exits 69", async () => {
    const { code, stderr } = await client(null, ["run", "--url", `http://127.0.0.1:${freePort()}`, "--", "true"]).done;
    expect(code).toBe(69);
    expect(stderr).toContain("cannot reach http://127.0.0.1:");
  });

  test("the token comes from RS_TOKEN or --token-file", async () => {
    const d = await server({ RS_TOKEN: "run-token" });
    expect((await client(d, ["run", "--", "true"]).done).code).toBe(69);
    expect((await client(d, ["run", "--", "true"], { RS_TOKEN: "run-token" }).done).code).toBe(0);
    const file = join(tempDir(), "token");
    await Bun.write(file, "run-token\n");
    expect((await client(d, ["run", "--token-file", file, "--", "true"]).done).code).toBe(0);
  });

  test("a wrong command line exits 64 with a clear message", async () => {
    const noCommand = await client(null, ["run", "--name", "x"]).done;
    expect(noCommand.code).toBe(64);
    expect(noCommand.stderr).toContain("no command given");
    const badTtl = await client(null, ["run", "--ttl", "0", "--", "true"]).done;
    expect(badTtl.stderr).toContain("--ttl 0 is not valid");
    const help = await client(null, ["run", "--help"]).done;
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Usage: releasestatus run");
  });
});

// A process that has exited (a zombie waiting to be reaped counts as gone) or never was.
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}
const pidIn = (file: string) => Number(existsSync(file) ? readFileSync(file, "utf8").trim() : 0);

describe("run never overlaps the next release", () => {
  test("a release stopped by someone else while the command ran: run exits 70 and says so", async () => {
    const d = await server();
    const go = join(tempDir(), "go");
    const c = client(d, ["run", "--", "sh", "-c", `until [ -f ${go} ]; do sleep 0.05; done`]);
    await until(async () => (await status(d)).running, "the release to start");
    expect(await d.body("/stop?name=ana")).toBe("1\n");
    await Bun.write(go, "");
    const { code, stderr } = await c.done;
    expect(code).toBe(70);
    expect(stderr).toContain("lost release #1 before the command finished");
  });

  test("renewals that never arrive: the whole command is killed before the lease ends on the server", async () => {
    const d = await server();
    // Between run and the daemon, a network on which renewals are lost: everything else passes.
    const proxy = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        const url = new URL(req.url);
        if (url.pathname === "/renew") return new Promise<Response>(() => {}); // never answered, never sent on
        return fetch(d.url + url.pathname + url.search, { method: req.method, headers: req.headers });
      },
    });
    try {
      const pidFile = join(tempDir(), "pid");
      const c = client(null, [
        "run",
        "--ttl",
        "6",
        "--url",
        `http://127.0.0.1:${proxy.port}`,
        "--",
        "sh",
        "-c",
        `trap '' TERM; echo $$ > ${pidFile}; while true; do sleep 0.05; done`,
      ]);
      await until(async () => pidIn(pidFile) > 0, "the command to start");
      const command = pidIn(pidFile);
      // The next deploy waits for the release; it gets it the moment the lease runs out on the server.
      expect(await d.body("/start?name=next&wait=30")).toBe("1\n");
      expect(alive(command)).toBe(false); // the command (which ignores SIGTERM) was already gone
      const { code } = await c.done;
      expect(code).toBe(70);
    } finally {
      proxy.stop(true);
    }
  }, 30_000);

  test("SIGTERM to run reaches the command's children too", async () => {
    const d = await server();
    const pidFile = join(tempDir(), "pid");
    const c = client(d, ["run", "--", "sh", "-c", `sleep 300 & echo $! > ${pidFile}; wait`]);
    await until(async () => pidIn(pidFile) > 0, "the grandchild to start");
    c.proc.kill("SIGTERM");
    await c.done;
    await until(async () => !alive(pidIn(pidFile)), "the grandchild to end");
    expect((await status(d)).running).toBe(false);
  });

  test("kill -9 of run ends the command's whole group within a second or so", async () => {
    const d = await server();
    const pidFile = join(tempDir(), "pid");
    const c = client(d, ["run", "--", "sh", "-c", `sleep 300 & echo $! > ${pidFile}; wait`]);
    await until(async () => pidIn(pidFile) > 0, "the grandchild to start");
    c.proc.kill("SIGKILL");
    await c.done;
    await until(async () => !alive(pidIn(pidFile)), "the grandchild to end", 3_000);
  });

  test("usage errors found after parsing exit 64; a command that cannot be found exits 127 and gives the release back", async () => {
    const d = await server();
    expect((await client(d, ["run", "--ttl", "604801", "--", "true"]).done).code).toBe(64);
    expect((await client(d, ["run", "--ttl", "1", "--", "true"]).done).code).toBe(64);
    expect((await client(d, ["run", "--wait", "999999", "--", "true"]).done).code).toBe(64);
    const control = await client(d, ["run", "--name", "a\u0001b", "--", "true"]).done;
    expect(control.code).toBe(64);
    const missing = await client(d, ["run", "--", "/no/such/command"]).done;
    expect(missing.code).toBe(127);
    expect((await status(d)).running).toBe(false);
  });
});

// The processes whose parent is `pid`, from /proc.
function childrenOf(pid: number): { pid: number; command: string }[] {
  const found: { pid: number; command: string }[] = [];
  for (const entry of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid)
        found.push({ pid: Number(entry), command: readFileSync(`/proc/${entry}/cmdline`, "utf8") });
    } catch {} // gone meanwhile
  }
  return found;
}

/** A command (sh, which ignores SIGTERM unless `yielding`) and its grandchild (sleep), both writing their pids. */
function stubbornCommand(yielding = false) {
  const dir = tempDir();
  const [shell, grandchild] = [join(dir, "sh"), join(dir, "sleep")];
  const trap = yielding ? "" : "trap '' TERM; ";
  const argv = ["sh", "-c", `${trap}sleep 300 & echo $! > ${grandchild}; echo $$ > ${shell}; wait`];
  const started = () => until(async () => pidIn(shell) > 0 && pidIn(grandchild) > 0, "the command and its grandchild");
  return { argv, started, pids: () => [pidIn(shell), pidIn(grandchild)] };
}

describe("whatever happens to run, the command is gone before the release can be given to anyone else", () => {
  for (const [what, stop] of [
    ["run alone is stopped (SIGSTOP)", (pid: number) => process.kill(pid, "SIGSTOP")],
    ["run's whole process group is stopped, as a terminal stops a job", (pid: number) => process.kill(-pid, "SIGSTOP")],
  ] as const)
    test(`${what}: the watchdog kills the command's group, grandchild included, before the lease runs out`, async () => {
      const d = await server();
      const command = stubbornCommand();
      const c = client(d, ["run", "--ttl", "3", "--", ...command.argv], {}, true);
      try {
        await command.started();
        stop(c.proc.pid);
        expect(await d.body("/start?name=next&wait=30")).toBe("1\n"); // granted the moment the lease runs out
        expect(command.pids().map(alive)).toEqual([false, false]);
      } finally {
        process.kill(-c.proc.pid, "SIGCONT");
      }
      expect((await c.done).code).toBe(70);
    }, 30_000);

  test("kill -9 of run's whole process group: the watchdog, in a session of its own, still kills the command", async () => {
    const d = await server();
    const command = stubbornCommand();
    const c = client(d, ["run", "--", ...command.argv], {}, true);
    await command.started();
    process.kill(-c.proc.pid, "SIGKILL");
    await c.done;
    await until(async () => command.pids().every((pid) => !alive(pid)), "the command and its grandchild to end");
  });

  test("the watchdog killed: run ends the command itself, gives the release back and exits 70", async () => {
    const d = await server();
    const command = stubbornCommand(true);
    const c = client(d, ["run", "--", ...command.argv]);
    await command.started();
    const dog = childrenOf(c.proc.pid).find((p) => p.command.includes("__watchdog"));
    expect(dog).toBeDefined();
    process.kill(dog?.pid ?? 0, "SIGKILL");
    const { code, stderr } = await c.done;
    expect(code).toBe(70);
    expect(stderr).toContain("the watchdog ended");
    await until(async () => command.pids().every((pid) => !alive(pid)), "the command and its grandchild to end");
    expect((await status(d)).running).toBe(false);
  });

  test("Ctrl-Z (SIGTSTP) to run is refused with a reason: the command runs on and the lease is renewed", async () => {
    const d = await server();
    const go = join(tempDir(), "go");
    const c = client(d, ["run", "--ttl", "2", "--", "sh", "-c", `until [ -f ${go} ]; do sleep 0.05; done`]);
    await until(async () => (await status(d)).running, "the release to start");
    c.proc.kill("SIGTSTP");
    const renewals = async () => (await kinds(d)).filter((k) => k === "renewed").length;
    const before = await renewals();
    await until(async () => (await renewals()) >= before + 2, "two more renewals"); // run was not stopped
    await Bun.write(go, "");
    const { code, stderr } = await c.done;
    expect(code).toBe(0);
    expect(stderr).toContain("Ctrl-Z is refused");
  });

  test("the first lease is counted from when /start was sent: an answer heard after it ran out runs nothing", async () => {
    const d = await server();
    let hear = () => {};
    const heard = new Promise<void>((resolve) => {
      hear = resolve;
    });
    // Between run and the daemon, a network that holds /start's answer back until it is told to let it through.
    const proxy = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: async (req) => {
        const url = new URL(req.url);
        const res = await fetch(d.url + url.pathname + url.search, { method: req.method, headers: req.headers });
        if (url.pathname !== "/start") return res;
        const body = await res.text();
        await heard;
        return new Response(body, { status: res.status, headers: res.headers });
      },
    });
    try {
      const pidFile = join(tempDir(), "pid");
      const c = client(null, [
        "run",
        "--ttl",
        "2",
        "--url",
        `http://127.0.0.1:${proxy.port}`,
        "--",
        "sh",
        "-c",
        `echo $$ > ${pidFile}; sleep 30`,
      ]);
      await until(async () => (await status(d)).running, "the release to be granted");
      expect(await d.body("/start?name=next&wait=30")).toBe("1\n"); // the lease ran out unrenewed
      hear();
      const { code, stderr } = await c.done;
      expect(code).toBe(70);
      expect(stderr).toContain("lost release #1");
      expect(existsSync(pidFile)).toBe(false); // the command never ran
    } finally {
      proxy.stop(true);
    }
  }, 30_000);
});

describe("run and status on a named lock", () => {
  test("run --lock holds that lock only; status --lock shows it, and status alone lists every lock", async () => {
    const d = await server();
    const go = join(tempDir(), "go");
    const c = client(d, [
      "run",
      "--lock",
      "prod/eu",
      "--name",
      "sion",
      "--",
      "sh",
      "-c",
      `until [ -f ${go} ]; do sleep 0.05; done`,
    ]);
    await until(
      async () => (await (await d.get("/locks/prod/eu/status?format=json")).json()).running,
      "prod/eu to be held",
    );
    expect(await d.body("/locks/prod/start")).toBe("0\n"); // the lock above is held through it
    expect(await d.body("/start?name=other")).toBe("1\n"); // the default lock is another lock
    const one = await client(d, ["status", "--lock", "prod/eu"]).done;
    expect(one.stdout).toMatch(/^running: release #1 by sion on prod\/eu running since/);
    const all = await client(d, ["status"]).done;
    expect(all.stdout).toMatch(/^running: release #2 by other running since/);
    expect(all.stdout).toMatch(/^running: prod\/eu: release #1 by sion on prod\/eu running since/m);
    expect(all.stdout).toMatch(/^held: prod: release #1 by sion on prod\/eu running since/m);
    const bad = await client(d, ["status", "--lock", "Prod"]).done;
    expect(bad.code).toBe(64);
    await Bun.write(go, "");
    expect((await c.done).code).toBe(0);
    expect((await (await d.get("/locks/prod/eu/status?format=json")).json()).running).toBe(false);
  });
});

describe("run on several locks and pools", () => {
  test("run --lock A --lock B holds both as one release, with RS_LOCK naming both, and stops it whole", async () => {
    const d = await server();
    const out = join(tempDir(), "locks");
    const c = client(d, [
      "run",
      "--lock",
      "prod/eu",
      "--lock",
      "shared-db",
      "--",
      "sh",
      "-c",
      `echo "$RS_RELEASE_ID $RS_LOCK" > ${out}`,
    ]);
    expect((await c.done).code).toBe(0);
    expect(readFileSync(out, "utf8")).toBe("1 prod/eu,shared-db\n");
    const { events } = await (await d.get("/locks/shared-db/history?format=json")).json();
    expect(events.map((e: { kind: string }) => e.kind)).toEqual(["stopped", "started"]);
    expect((await (await d.get("/locks/shared-db/status?format=json")).json()).running).toBe(false);
  });

  test("run --lock 'devices/*' takes a declared child, names it in RS_LOCK, and renews and stops it there", async () => {
    const d = await server({ RS_CONFIG: configFile('[[lock]]\nname = "devices/pixel-7"\n') });
    const dir = tempDir();
    const [go, out] = [join(dir, "go"), join(dir, "lock")];
    const command = `until [ -f ${go} ]; do sleep 0.05; done; echo "$RS_LOCK" > ${out}`;
    const c = client(d, ["run", "--lock", "devices/*", "--ttl", "2", "--", "sh", "-c", command]);
    const kinds = async () =>
      (await (await d.get("/locks/devices/pixel-7/history?format=json")).json()).events.map(
        (e: { kind: string }) => e.kind,
      );
    await until(async () => (await kinds()).includes("renewed"), "a renewal on devices/pixel-7");
    await Bun.write(go, "");
    expect((await c.done).code).toBe(0);
    expect(readFileSync(out, "utf8")).toBe("devices/pixel-7\n");
    expect((await kinds())[0]).toBe("stopped");
  });
});

describe("run on a newest-first lock exits with its own code when superseded or stale, never 0", () => {
  const NEWEST = '[[lock]]\nname = "prod"\nqueue = "newest"\n';

  test("a run a newer version passed while it waited exits 79, saying by whom; the command never ran", async () => {
    const d = await server({ RS_CONFIG: configFile(NEWEST) });
    await d.body("/locks/prod/start?name=first&version=1");
    const out = join(tempDir(), "ran");
    const older = client(d, ["run", "--lock", "prod", "--version", "2", "--wait", "60", "--", "touch", out]);
    await until(
      async () => (await (await d.get("/locks/prod/status?format=json")).json()).queue.length === 1,
      "2 waiting",
    );
    const newer = client(d, ["run", "--lock", "prod", "--version", "3", "--wait", "60", "--", "true"]);
    const { code, stderr } = await older.done;
    expect(code).toBe(79);
    expect(stderr).toContain("not releasing (superseded): superseded by 3 from tester, who now waits in your place");
    expect(existsSync(out)).toBe(false);
    await d.body("/locks/prod/stop");
    expect((await newer.done).code).toBe(0);
  });

  test("a run older than the last release exits 80 with the words; --override runs it", async () => {
    const d = await server({ RS_CONFIG: configFile(NEWEST) });
    await d.body("/locks/prod/start?name=ana&version=v2.4.0");
    await d.body("/locks/prod/stop");
    const { code, stderr } = await client(d, ["run", "--lock", "prod", "--version", "v2.3.9", "--", "true"]).done;
    expect(code).toBe(80);
    expect(stderr).toContain("not releasing (stale): v2.3.9 is older than v2.4.0");
    const rollback = client(d, [
      "run",
      "--lock",
      "prod",
      "--version",
      "v2.3.9",
      "--override",
      "roll back",
      "--",
      "true",
    ]);
    expect((await rollback.done).code).toBe(0);
  });
});

describe("releasestatus status", () => {
  test("prints the status for people, and JSON with --json", async () => {
    const d = await server();
    await d.body("/start?name=sion&reason=v2");
    const text = await client(d, ["status"]).done;
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^running: release #1 by sion \(v2\)/);
    const json = await client(null, ["status", "--json", "--url", d.url]).done;
    expect(JSON.parse(json.stdout).release.name).toBe("sion");
  });

  test("uses RS_PORT when no URL is given", async () => {
    const d = await server();
    const { stdout } = await client(null, ["status"], { RS_PORT: String(d.port) }).done;
    expect(stdout).toBe("idle: no release is running\n");
  });

  test("without --lock, when RS_LOCKS has no default: exit 64 and words that say to name a lock", async () => {
    const d = await server({ RS_LOCKS: "staging,prod" });
    const { code, stdout, stderr } = await client(d, ["status"]).done;
    expect({ code, stdout }).toEqual({ code: 64, stdout: "" });
    expect(stderr).toContain("there is no lock default: RS_LOCKS allows only staging, prod");
    expect(stderr).toContain("--lock");
  });

  test("an unreachable server exits 69; --help explains", async () => {
    expect((await client(null, ["status", "--url", `http://127.0.0.1:${freePort()}`]).done).code).toBe(69);
    expect((await client(null, ["status", "--help"]).done).stdout).toContain("Usage: releasestatus status");
  });
});

describe("run says while it waits, and what it gave back", () => {
  // run's stderr as it comes: the words are checked while run still waits.
  function watched(d: Daemon, args: string[]) {
    const proc = Bun.spawn([BINARY, ...args], {
      env: { PATH: process.env.PATH ?? "", USER: "tester", RS_URL: d.url },
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    let said = "";
    const read = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stderr) said += decoder.decode(chunk, { stream: true });
    })();
    const done = Promise.all([proc.exited, read]).then(([code]) => ({ code, stderr: said }));
    return { proc, done, said: () => said };
  }

  test("waiting in line, it says its place, who holds the lock, since when and how long it usually takes", async () => {
    const d = await server();
    await d.body("/start?name=first");
    await d.body("/stop"); // one completed release: an estimate
    await d.body("/start?name=sion&reason=v2");
    const c = watched(d, ["run", "--name", "bob", "--wait", "60", "--", "true"]);
    await until(async () => c.said().includes("waiting"), "run to say it waits");
    expect(c.said()).toMatch(
      /^releasestatus run: waiting for the release \(1st of 1 in line\): release #2 by sion \(v2\) running since \S+Z; usually takes \d+s, expected to end around \S+Z\n/,
    );
    await d.body("/stop?name=sion");
    const { code, stderr } = await c.done;
    expect(code).toBe(0);
    expect(stderr).toMatch(/releasestatus run: gave back release #3 after \d+s\n$/);
  });

  test("Ctrl-C while waiting says it left the line holding nothing", async () => {
    const d = await server();
    await d.body("/start?name=sion");
    const c = watched(d, ["run", "--wait", "60", "--", "true"]);
    await until(async () => c.said().includes("waiting"), "run to say it waits");
    c.proc.kill("SIGINT");
    const { code, stderr } = await c.done;
    expect(code).toBe(130);
    expect(stderr).toMatch(/releasestatus run: interrupted: left the line for the release; nothing was held\n$/);
    expect((await status(d)).queue).toEqual([]);
  });

  test("Ctrl-C while the command runs says which release it gave back", async () => {
    const d = await server();
    const pidFile = join(tempDir(), "pid");
    const c = watched(d, ["run", "--", "sh", "-c", `echo $$ > ${pidFile}; exec sleep 30`]);
    await until(async () => pidIn(pidFile) > 0, "the command to start");
    c.proc.kill("SIGINT");
    const { code, stderr } = await c.done;
    expect(code).toBe(130);
    expect(stderr).toMatch(/^releasestatus run: gave back release #1 after \d+s\n$/);
  });
});
