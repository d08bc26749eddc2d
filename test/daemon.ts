// Starts the real compiled binary for tests, on a free loopback port, and
// stops it again. Every suite that speaks HTTP goes through here.

import { Database } from "bun:sqlite";
import { afterEach } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";

export const BINARY = resolve(import.meta.dir, "..", "releasestatus");

export type Daemon = {
  container: string | null; // the container's name when running the image (RS_TEST_IMAGE)
  url: string;
  port: number;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  output: () => string; // stdout and stderr so far
  get: (path: string, init?: RequestInit) => Promise<Response>;
  body: (path: string, init?: RequestInit) => Promise<string>;
  stop: (signal?: NodeJS.Signals) => Promise<number>;
};

export function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

export const tempDir = (prefix = "rs-test-") => mkdtempSync(join(tmpdir(), prefix));

/** Runs the binary with `env` (RS_PORT and RS_HOST are filled in) and waits until it answers. */
export async function startDaemon(
  env: Record<string, string> = {},
  opts: { port?: number; cwd?: string } = {},
): Promise<Daemon> {
  const port = opts.port ?? freePort();
  const cwd = opts.cwd ?? tempDir();
  // RS_TEST_DB runs the same tests on another store, e.g. a PostgreSQL URL.
  const settings = { RS_PORT: String(port), RS_HOST: "127.0.0.1", RS_DB: process.env.RS_TEST_DB ?? ":memory:", ...env };
  const image = process.env.RS_TEST_IMAGE;
  const container = `rs-test-${port}`;
  // With RS_TEST_IMAGE set, the same tests run against the container image, through a published loopback port.
  const command = image
    ? [
        "docker",
        "run",
        "--rm",
        "--name",
        container,
        "-p",
        `127.0.0.1:${port}:${port}`,
        ...Object.entries({ ...settings, RS_HOST: "0.0.0.0" }).flatMap(([k, v]) => ["-e", `${k}=${v}`]),
        image,
      ]
    : [BINARY];
  const proc = Bun.spawn(command, {
    cwd,
    env: { PATH: process.env.PATH ?? "", ...(image ? {} : settings) },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let text = "";
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(proc.stdout), drain(proc.stderr)]);
  const url = `http://127.0.0.1:${port}`;
  const daemon: Daemon = {
    container: image ? container : null,
    url,
    port,
    proc,
    output: () => text,
    get: (path, init) => fetch(url + path, init),
    body: async (path, init) => (await fetch(url + path, init)).text(),
    stop: async (signal = "SIGTERM") => {
      // docker run passes SIGTERM and SIGINT on to the container, but SIGKILL would only end the client.
      if (image && signal === "SIGKILL") Bun.spawnSync(["docker", "kill", container]);
      else proc.kill(signal);
      const code = await proc.exited;
      await drained;
      return code;
    },
  };
  for (let i = 0; i < 400; i++) {
    if (proc.exitCode !== null) {
      await drained;
      throw new Error(`releasestatus exited with ${proc.exitCode} before answering:\n${text}`);
    }
    try {
      const res = await fetch(`${url}/healthz`);
      await res.text();
      return daemon;
    } catch {
      await Bun.sleep(25);
    }
  }
  await daemon.stop("SIGKILL");
  throw new Error(`releasestatus did not answer on ${url} within 10 s:\n${text}`);
}

/** Runs the binary to completion (for start-up errors and subcommands). */
export const runBinary = (args: string[], env: Record<string, string> = {}) =>
  runToEnd([BINARY, ...args], tempDir(), env);

/** Runs a command to completion in `cwd`, with only PATH and `env`: its output and exit code. */
export async function runToEnd(command: string[], cwd: string, env: Record<string, string> = {}) {
  const proc = Bun.spawn(command, {
    cwd,
    env: { PATH: process.env.PATH ?? "", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { stdout, stderr, code };
}

/** For a suite: a function that starts daemons, all of which are killed after each test. */
export function daemonsPerTest() {
  const started: Daemon[] = [];
  afterEach(async () => {
    for (const d of started.splice(0)) {
      d.proc.kill("SIGCONT"); // a test may have paused it
      if (d.proc.exitCode === null) await d.stop("SIGKILL");
    }
  });
  return async (env: Record<string, string> = {}, opts: { port?: number; cwd?: string } = {}) => {
    const d = await startDaemon(env, opts);
    started.push(d);
    return d;
  };
}

export const statusOf = async (d: Daemon) => (await d.get("/status?format=json")).json();

/** The kinds of the daemon's recent events, newest first. */
export const historyKinds = async (d: Daemon): Promise<string[]> =>
  (await (await d.get("/history?format=json")).json()).events.map((e: { kind: string }) => e.kind);

/** Polls `check` until it holds; fails after `ms` naming what it waited for. */
export async function until(check: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // A check that throws (a file not written yet, a daemon not answering yet) is "not yet".
    if (await check().catch(() => false)) return;
    await Bun.sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A store of its own for one daemon: an SQLite file, or a new database when RS_TEST_DB names a PostgreSQL server. */
let databases = 0;
export async function freshDb(): Promise<string> {
  const server = process.env.RS_TEST_DB;
  if (!server) return join(tempDir(), "state.db");
  const name = `test_${process.pid}_${++databases}`;
  const admin = new Bun.SQL(server);
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.close();
  const url = new URL(server);
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * Ends every lease stored in the SQLite file of a stopped daemon an hour ago: a lease that ran out while the
 * daemon was down, however long the machine took to get there (a real one-second lease may run out before the kill).
 */
export function leasesRanOutWhileDown(db: string) {
  const raw = new Database(db);
  raw.run("UPDATE lock SET expires_at = ? WHERE expires_at IS NOT NULL", [Date.now() - 3_600_000]);
  raw.close();
}

/** A configuration file (RS_CONFIG) holding `text`, in a directory of its own. */
export function configFile(text: string): string {
  const path = join(tempDir(), "releasestatus.toml");
  writeFileSync(path, text);
  return path;
}
