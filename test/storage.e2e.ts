// Storage that fails while the daemon runs: a full disk. Needs root to mount a
// small tmpfs, so it runs in `make test-system`, not `make test`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BINARY, type Daemon, startDaemon, tempDir, until } from "./daemon.ts";

const mountPoint = tempDir("rs-full-disk-");
let d: Daemon;

beforeAll(async () => {
  const mount = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mountPoint]);
  if (mount.exitCode !== 0) throw new Error(`this suite needs root to mount a tmpfs: ${mount.stderr}`);
  d = await startDaemon({ RS_DB: join(mountPoint, "state.db") });
});
afterAll(async () => {
  await d?.stop("SIGKILL");
  Bun.spawnSync(["umount", mountPoint]);
});

// Fills the file system to the last byte, in shrinking chunks; returns the files written.
function fillDisk(): string[] {
  const files: string[] = [];
  for (let size = 64 * 1024; size >= 512; ) {
    const file = join(mountPoint, `filler-${files.length}`);
    try {
      writeFileSync(file, Buffer.alloc(size, 1));
      files.push(file);
    } catch {
      rmSync(file, { force: true });
      size /= 2;
    }
    if (files.length > 10_000) throw new Error("the tmpfs never filled up");
  }
  return files;
}

describe("a full disk", () => {
  test("answers 0 with storage, reports 503 on /healthz, changes nothing, and recovers when space returns", async () => {
    expect(await d.body("/start?name=before")).toBe("1\n");
    expect(await d.body("/stop")).toBe("1\n");
    const filler = fillDisk();

    // Commits append to the write-ahead log, so the disk being full soon stops them.
    let refused: Response | null = null;
    let lastOk = "";
    for (let i = 0; i < 2000 && !refused; i++) {
      const path = (await d.get("/status?format=json").then((r) => r.json())).running ? "/stop" : "/start?name=filler";
      const res = await d.get(path);
      if ((await res.clone().text()) === "1\n") lastOk = path;
      else refused = res;
    }
    expect(refused).not.toBeNull();
    if (!refused) return;
    expect(refused.status).toBe(503);
    expect(refused.headers.get("x-reason-code")).toBe("storage");
    expect(await refused.text()).toBe("0\n");
    expect((await d.get("/healthz")).status).toBe(503);
    // The refused change did not happen: memory still shows the last acknowledged state.
    const status = await (await d.get("/status?format=json")).json();
    expect(status.running).toBe(lastOk.startsWith("/start"));
    // The log line is written before the answer, but reaches this test through a pipe: wait for it.
    await until(async () => d.output().includes("could not save the release state"), "the failure to be logged");

    for (const f of filler) rmSync(f);
    let healthy = false;
    for (let i = 0; i < 50 && !healthy; i++) {
      healthy = (await d.get("/healthz")).status === 200;
      if (!healthy) await Bun.sleep(100);
    }
    expect(healthy).toBe(true);
    expect(await d.body(status.running ? "/stop" : "/start")).toBe("1\n");
    expect(d.proc.exitCode).toBeNull();
  });
});

describe("a disk that stays full", () => {
  test("/healthz answers 200 only when a change can be saved: a storage check that writes nothing proves nothing", async () => {
    const f = await startDaemon({ RS_DB: join(mountPoint, "health.db") });
    let filler: string[] = [];
    try {
      const id = (await f.get("/start?name=holder&ttl=3600")).headers.get("x-release-id");
      filler = fillDisk();
      let full = false;
      for (let i = 0; i < 2000 && !full; i++) full = (await f.get(`/renew?id=${id}&ttl=3600`)).status === 503;
      expect(full).toBe(true);
      // The daemon checks storage again each second and says when it last tried: wait for two checks.
      const tried = async () => /tried again at (\S+)/.exec(await f.body("/healthz"))?.[1];
      let first: string | undefined;
      await until(async () => {
        first = await tried();
        return first !== undefined;
      }, "a first check of storage");
      await until(async () => (await tried()) !== first, "a second check of storage (or storage working again)");
      for (let i = 0; i < 20; i++) {
        const healthy = (await f.get("/healthz")).status === 200;
        const renewed = (await f.get(`/renew?id=${id}&ttl=3600`)).status === 200;
        if (healthy) expect(renewed).toBe(true); // a 200 is only given when a change can be saved
      }
      expect((await f.get("/healthz")).status).toBe(503);

      for (const file of filler.splice(0)) rmSync(file);
      await until(async () => (await f.get("/healthz")).status === 200, "storage to work again");
      expect(await f.body(`/stop?id=${id}`)).toBe("1\n");
    } finally {
      for (const file of filler) rmSync(file);
      await f.stop("SIGKILL");
    }
  });
});

describe("a full disk and the wait line", () => {
  test("a waiter whose joining could not be saved is answered storage and is not left in line", async () => {
    const w = await startDaemon({ RS_DB: join(mountPoint, "line.db") });
    let filler: string[] = [];
    try {
      const started = await w.get("/start?name=holder&ttl=3600");
      const id = started.headers.get("x-release-id");
      filler = fillDisk();
      // Renewals commit and keep the release running: they fill what the write-ahead log had left.
      let full = false;
      for (let i = 0; i < 2000 && !full; i++) full = (await w.get(`/renew?id=${id}&ttl=3600`)).status === 503;
      expect(full).toBe(true);
      const queue = async () => (await (await w.get("/status?format=json")).json()).queue as unknown[];
      // Joining may still fit where a renewal did not: each waiter that got in is sent away, until one cannot join.
      let refused = null as Response | null;
      for (let i = 0; i < 200 && !refused; i++) {
        const gone = new AbortController();
        let answered = null as Response | null;
        const asking = w.get("/start?name=waiter&wait=60", { signal: gone.signal }).then(
          (r) => (answered = r),
          () => null,
        );
        await until(async () => answered !== null || (await queue()).length > 0, "the waiter to join or be answered");
        if (answered) refused = answered;
        else {
          gone.abort();
          await asking;
          await until(async () => (await queue()).length === 0, "the waiter that went away to leave the line");
        }
      }
      expect(refused?.status).toBe(503);
      expect(refused?.headers.get("x-reason-code")).toBe("storage");
      expect(await queue()).toEqual([]);

      for (const f of filler.splice(0)) rmSync(f);
      await until(async () => (await w.get("/healthz")).status === 200, "storage to work again");
      expect(await w.body(`/stop?id=${id}`)).toBe("1\n");
      expect(await w.body("/start?name=next")).toBe("1\n"); // no one left in line ahead of it
    } finally {
      for (const f of filler) rmSync(f);
      await w.stop("SIGKILL");
    }
  });
});

// Root may write anywhere, so these run the binary as nobody (uid 65534).
function asNobody(env: Record<string, string>) {
  const r = Bun.spawnSync(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BINARY], {
    env: { PATH: process.env.PATH ?? "", RS_PORT: "1", RS_HOST: "127.0.0.1", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode, stderr: r.stderr.toString() };
}

describe("a place the daemon may not write", () => {
  const reachable = () => {
    const dir = tempDir();
    chmodSync(dir, 0o755); // nobody may enter it
    return dir;
  };

  test("an unwritable directory stops start-up with the path and what to do", () => {
    const dir = join(reachable(), "locked");
    mkdirSync(dir, { mode: 0o755 });
    const { code, stderr } = asNobody({ RS_DB: join(dir, "state.db") });
    expect(code).toBe(2);
    expect(stderr).toBe(
      `releasestatus: cannot write ${dir}: give the daemon's user write access, or point RS_DB at a writable place\n`,
    );
  });

  test("a read-only database file stops start-up with the path and what to do", async () => {
    const dir = join(reachable(), "shared");
    mkdirSync(dir);
    chmodSync(dir, 0o1777);
    const file = join(dir, "state.db");
    const d = await startDaemon({ RS_DB: file });
    await d.stop();
    rmSync(`${file}-lock`, { force: true }); // left by versions that guarded the file with a lock file beside it
    chmodSync(file, 0o644);
    const { code, stderr } = asNobody({ RS_DB: file });
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot write ${file}: give the daemon's user write access`);
  });
});

describe("a directory the daemon may not enter", () => {
  test("is named, with what to do", () => {
    const dir = join(tempDir(), "inner"); // tempDir() is 0700 and root's
    mkdirSync(dir);
    const { code, stderr } = asNobody({ RS_DB: join(dir, "state.db") });
    expect(code).toBe(2);
    expect(stderr).toContain(`cannot reach ${dir}: give the daemon's user permission to enter every directory`);
  });
});
