// The container image on a real Docker engine: runs as non-root, has no shell,
// reports healthy, stops quickly, and keeps state on its volume. Runs in
// `make test-container` (which also runs index.test.ts against the image).
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "./daemon.ts";

const IMAGE = process.env.RS_TEST_IMAGE ?? "releasestatus";
const VOLUME = `rs-test-volume-${process.pid}`;
const started: string[] = [];

function docker(...args: string[]) {
  const r = Bun.spawnSync(["docker", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString().trim(), err: r.stderr.toString().trim() };
}

/** Starts the image detached on a free loopback port with the test volume; returns its URL and name. */
async function runContainer() {
  const port = freePort();
  const name = `rs-container-test-${port}`;
  const run = docker("run", "-d", "--name", name, "-p", `127.0.0.1:${port}:8080`, "-v", `${VOLUME}:/data`, IMAGE);
  expect(run.err).toBe("");
  started.push(name);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(`${url}/healthz`)).ok) return { url, name };
    } catch {}
    await Bun.sleep(50);
  }
  const logs = docker("logs", name);
  throw new Error(`the container did not answer: ${logs.out}\n${logs.err}`);
}

afterAll(() => {
  for (const name of started) docker("rm", "-f", name);
  docker("volume", "rm", "-f", VOLUME);
});

describe("the image", () => {
  test("runs the daemon as uid 65532, not root", async () => {
    const { name } = await runContainer();
    expect(docker("inspect", "-f", "{{.Config.User}}", IMAGE).out).toBe("65532:65532");
    const pid = docker("inspect", "-f", "{{.State.Pid}}", name).out;
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toMatch(/^Uid:\s+65532\s+65532\s+65532\s+65532$/m);
    docker("rm", "-f", name); // each test has the volume, and so the database, to itself
  });

  test("has no shell", () => {
    const shell = docker("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c", "true");
    expect(shell.code).not.toBe(0);
    expect(shell.err).toContain("no such file or directory");
  });

  test("holds the binary as its only file on top of the base image, plus the data directory", () => {
    const history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE).out;
    const copies = history.split("\n").filter((line) => line.includes("COPY"));
    expect(copies).toHaveLength(2);
    expect(copies.some((c) => c.includes("/usr/local/bin/releasestatus"))).toBe(true);
    expect(copies.some((c) => c.includes("/data"))).toBe(true);
  });

  test("reports healthy through its HEALTHCHECK, which runs the binary itself", async () => {
    const { name } = await runContainer();
    let health = "";
    for (let i = 0; i < 100 && health !== "healthy"; i++) {
      health = docker("inspect", "-f", "{{.State.Health.Status}}", name).out;
      if (health !== "healthy") await Bun.sleep(100);
    }
    expect(health).toBe("healthy");
    docker("rm", "-f", name);
  });

  test("stops within 2 s on docker stop, with exit code 0", async () => {
    const { name } = await runContainer();
    // Past 2 s docker would SIGKILL it and the exit code would be 137, not 0.
    const began = performance.now();
    const stop = docker("stop", "-t", "2", name);
    const took = performance.now() - began;
    expect(stop.code).toBe(0);
    expect(docker("inspect", "-f", "{{.State.ExitCode}}", name).out).toBe("0");
    expect(docker("logs", name).out).toContain("SIGTERM received");
    console.log(`docker stop took ${took.toFixed(0)} ms`);
    docker("rm", name);
  });

  test("keeps a running release across a container replacement on the same volume", async () => {
    const first = await runContainer();
    expect(await (await fetch(`${first.url}/start?name=container&reason=v1`)).text()).toBe("1\n");
    const before = await (await fetch(`${first.url}/status?format=json`)).json();
    expect(docker("stop", first.name).code).toBe(0);
    expect(docker("rm", first.name).code).toBe(0);

    const second = await runContainer();
    expect(await (await fetch(`${second.url}/start`)).text()).toBe("0\n");
    const after = await (await fetch(`${second.url}/status?format=json`)).json();
    expect(after.release).toEqual(before.release);
    expect(after.store).toBe("SQLite /data/releasestatus.db");
    expect(docker("logs", second.name).out).toContain("restored: release #");
  });

  test("the image is the binary and little else: at most 30 MB over the binary's size", () => {
    const bytes = Number(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).out);
    const binary = statSync(join(import.meta.dir, "..", "releasestatus")).size;
    console.log(`image ${IMAGE}: ${(bytes / 1e6).toFixed(1)} MB, binary ${(binary / 1e6).toFixed(1)} MB`);
    expect(bytes).toBeGreaterThan(binary);
    expect(bytes - binary).toBeLessThan(30e6); // the distroless base is a few MB; a shell or a distro would not fit
  });
});
