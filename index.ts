// releasestatus: a small daemon that lets only one QA release run at a time.
// Deploy scripts ask it over HTTP whether they may release; a person can block
// all releases. This file reads the command line and starts the daemon. The
// rules are in release.ts, the state object and wait queue in lock.ts, storage
// in store.ts (SQLite) or postgres.ts (replicas), the endpoints in http.ts, and
// the client commands (run, status, healthcheck) in client.ts.

import pkg from "./package.json" with { type: "json" };
import { type Config, ConfigError, isPostgres, readConfig } from "./src/config.ts";
import { closeLock, history, lock, onCommit, openLock, publish, storeDescription, useShared } from "./src/engine.ts";
import { broadcastChange, closeEventStreams, startServer } from "./src/http/server.ts";
import { createLog, type Log } from "./src/log.ts";
import { learnFromHistory, observe } from "./src/metrics.ts";
import { describeBlock, describeEvent, describeRelease } from "./src/release.ts";
import { openSqliteStore, StoreOpenError } from "./src/store/sqlite.ts";

const USAGE = `releasestatus ${pkg.version}: lets only one QA release run at a time.

Usage:
  RS_PORT=8080 releasestatus      run the daemon
  releasestatus run [options] -- COMMAND [ARGS...]
                                  hold the release while COMMAND runs (see run --help)
  releasestatus status [--url URL] [--json]
                                  print the server's status
  releasestatus healthcheck       exit 0 if the daemon on RS_PORT is healthy (for containers)
  releasestatus --help | --version

Settings (environment):
  RS_PORT           port to listen on (required, 1-65535)
  RS_HOST           address to listen on (default 0.0.0.0, all interfaces)
  RS_DB             SQLite file for state and history (default releasestatus.db; :memory: keeps nothing),
                    or postgres://user:password@host:5432/db to share the lock between replicas
  RS_DB_FILE        file holding RS_DB (for secrets)
  RS_HISTORY_LIMIT  events kept in the history (default 10000)
  RS_TTL            lease in seconds for a start without ttl= (default: releases never expire)
  RS_MAX_WAIT       longest wait= allowed, in seconds (default 3600)
  RS_TOKEN          token that state changes must send as 'Authorization: Bearer <token>'
  RS_TOKEN_FILE     file holding the token (instead of RS_TOKEN)
  RS_LOG_FORMAT     text (default) or json

Endpoints: /start /stop /block /unblock /renew /status /history /healthz /metrics /events, and a page at /
(see the README).
`;

const EXIT_USAGE = 2;

async function main(argv: string[]): Promise<number> {
  const [command] = argv;
  if (command === "--help" || command === "-h" || command === "help") return print(USAGE);
  if (command === "--version" || command === "-v") return print(`releasestatus ${pkg.version}\n`);
  // The client commands are loaded only when asked for, so the daemon starts without them.
  if (command === "healthcheck") return (await import("./src/client.ts")).healthcheck();
  if (command === "run") return (await import("./src/client.ts")).run(argv.slice(1));
  if (command === "status") return (await import("./src/client.ts")).status(argv.slice(1));
  if (command !== undefined && command !== "serve")
    return fail(`unknown command ${JSON.stringify(command)}: run 'releasestatus --help' to see the commands`);
  let cfg: Config;
  try {
    cfg = readConfig(process.env);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
  return serve(cfg);
}

async function serve(cfg: Config): Promise<number> {
  const log = createLog(cfg.logFormat);
  const storageError = (where: string) => (e: Error) =>
    log.error(`could not save the release state to ${where}: ${e.message}`);
  let closeStore: () => unknown;
  try {
    closeStore = isPostgres(cfg.db) ? await openShared(cfg, log, storageError) : openLocal(cfg, storageError);
  } catch (e) {
    if (e instanceof StoreOpenError) return fail(e.message);
    throw e;
  }
  learnFromHistory(await history(1000));
  onCommit(observe);
  onCommit(({ events }) => {
    for (const e of events)
      log.info(describeEvent(e), { event: e.kind, releaseId: e.releaseId, name: e.name, reason: e.reason });
  });
  logRestored(log);

  let server: ReturnType<typeof startServer>;
  try {
    server = startServer(cfg, log);
  } catch (e) {
    await closeStore();
    return fail(`cannot listen on ${cfg.host}:${cfg.port}: ${(e as Error).message}`);
  }
  log.info(`releasestatus ${pkg.version} listening on ${cfg.host}:${server.port}, state in ${storeDescription()}`);
  if (cfg.token === null)
    log.warn("no RS_TOKEN is set: anyone who can reach this port can start, stop and block releases");

  return new Promise((resolve) => {
    let stopping = false;
    const shutdown = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info(`${signal} received: answering waiters, finishing requests in flight, then exiting`);
      closeLock();
      closeEventStreams();
      const force = setTimeout(() => server.stop(true), 2000); // a client that will not finish is cut
      await server.stop();
      clearTimeout(force);
      await closeStore();
      log.info("stopped");
      resolve(0);
    };
    process.on("SIGTERM", () => shutdown("SIGTERM"));
    process.on("SIGINT", () => shutdown("SIGINT"));
  });
}

/** The default: an SQLite file (or memory) that this daemon alone uses. */
function openLocal(cfg: Config, storageError: (where: string) => (e: Error) => void) {
  const store = openSqliteStore(cfg.db, cfg.historyLimit);
  openLock(store, storageError(store.description));
  return () => store.close();
}

/** Several replicas on one PostgreSQL database; loaded only when asked for. */
async function openShared(cfg: Config, log: Log, storageError: (where: string) => (e: Error) => void) {
  const { openPostgresLock } = await import("./src/store/postgres.ts");
  const shared = await openPostgresLock({
    url: cfg.db,
    historyLimit: cfg.historyLimit,
    onCommit: publish,
    onRemoteChange: broadcastChange,
    onStorageError: (e) => storageError("PostgreSQL")(e),
    onState: (s) => {
      lock.state = s;
    },
  });
  useShared(shared);
  if (!shared.healthy) log.warn(`${shared.description} cannot be reached yet: answering storage until it can`);
  return () => shared.close();
}

function logRestored(log: Log) {
  const { release, block } = lock.state;
  if (!release && !block) return;
  const parts = [
    release ? describeRelease(release) : "no release running",
    block ? describeBlock(block) : "releasing open",
  ];
  log.info(`restored: ${parts.join("; ")}`, { event: "restored" });
}

// console, not process.stdout: the latter loads Node's stream machinery, ~9 ms of start-up.
function print(text: string): number {
  console.log(text.replace(/\n$/, ""));
  return 0;
}

function fail(message: string): number {
  console.error(`releasestatus: ${message}`);
  return EXIT_USAGE;
}

// No top-level await: the binary is built with --bytecode, which needs a CommonJS-shaped entry.
main(process.argv.slice(2)).then((code) => process.exit(code));
