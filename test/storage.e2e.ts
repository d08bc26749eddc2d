// Storage that fails while the daemon runs: a full disk. Needs root to mount a
// small tmpfs, so it runs in `make test-system`, not `make test`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Daemon, startDaemon, tempDir } from "./daemon.ts";

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
    expect(d.output()).toContain("could not save the release state");

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
