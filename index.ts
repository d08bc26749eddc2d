// releasestatus: a small daemon that lets only one QA release run at a time.
// Deploy scripts ask it over HTTP whether they may release; a person can block
// all releases. This file is the wiring: command line → settings (src/config.ts)
// → store (src/store/: memory, SQLite, PostgreSQL) → engine (src/engine.ts, on
// the rules of src/release.ts) → listeners (log, metrics) → HTTP (src/http/).
// The client commands (run, status, healthcheck) are in src/client.ts.

import pkg from "./package.json" with { type: "json" };
import { closed } from "./src/access.ts";
import {
  applyReload,
  type Config,
  ConfigError,
  declaredChildren,
  declaredLock,
  describeTrust,
  lockAllowed,
  readConfig,
} from "./src/config.ts";
import { createEngine, type Engine, systemClock } from "./src/engine.ts";
import { frozenAt, keepCalendar, replaceCalendar, stopCalendar } from "./src/freezes.ts";
import { closeEventStreams, startServer } from "./src/http/server.ts";
import { createLog, type Log } from "./src/log.ts";
import { learnFromHistory, observe } from "./src/metrics.ts";
import { blockOn, type Event, type State } from "./src/release.ts";
import { startupStep } from "./src/startup.ts";
import { openStore } from "./src/store/schemes.ts";
import { type Store, StoreOpenError } from "./src/store/store.ts";
import { print } from "./src/terminal.ts";
import { describeBlock, describeEvent, describeRelease } from "./src/words.ts";

const USAGE = `releasestatus ${pkg.version}: lets only one QA release run at a time.

Usage:
  RS_PORT=8080 releasestatus      run the daemon
  releasestatus run [options] -- COMMAND [ARGS...]
                                  hold the release while COMMAND runs (see run --help)
  releasestatus status [--lock NAME] [--url URL] [--json]
                                  print the server's status
  releasestatus backup FILE [--url URL]
                                  write a consistent copy of the daemon's SQLite database to FILE
  releasestatus healthcheck       exit 0 if the daemon on RS_PORT is healthy (for containers)
  releasestatus check-config [--online] FILE
                                  check a configuration file (RS_CONFIG) without starting; --online
                                  also fetches the keys of each [[trust]] issuer
  releasestatus token --who NAME --can release,block --locks prod,staging
                                  make a new named token and the [[token]] block that grants it
  releasestatus webhook-test [--webhook N]
                                  send a test message to the webhooks of RS_CONFIG (or the N-th) and say how each answered
  releasestatus --help | --version

Settings (environment; the file RS_CONFIG names may hold them too, and lists of tokens):
  RS_CONFIG         a TOML configuration file, re-read on SIGHUP (see docs/access.md)
  RS_PORT           port to listen on (required, 1-65535)
  RS_HOST           address to listen on (default 0.0.0.0, all interfaces)
  RS_DB             SQLite file for state and history (default releasestatus.db; :memory: keeps nothing),
                    or postgres://user:password@host:5432/db to share the lock between replicas
  RS_DB_FILE        file holding RS_DB (for secrets)
  RS_DB_POOL        PostgreSQL: most connections a replica opens, besides one for LISTEN (default 4)
  RS_HISTORY_LIMIT  events kept in the history (default 10000)
  RS_TTL            lease in seconds for a start without ttl= (default: releases never expire)
  RS_MAX_WAIT       longest wait= allowed, in seconds (default 3600)
  RS_TOKEN          token that state changes must send as 'Authorization: Bearer <token>'
  RS_TOKEN_FILE     file holding the token (instead of RS_TOKEN)
  RS_LOG_FORMAT     text (default) or json
  RS_HOSTS          host names a browser may reach the daemon by (besides IP addresses and localhost)
  RS_LOCKS          the only lock names allowed, comma-separated (default: any)
  RS_MAX_LOCKS      without RS_LOCKS, the most lock names holding a release or block (default 1000;
                    a token limited to some locks holds at most RS_MAX_LOCKS / (limited tokens + 1))
  RS_MAX_STREAMS    event streams (/events) open at once (default 100)
  RS_WEBHOOK_BACKLOG events a webhook may fall behind before the oldest are dropped (default 10000)

Endpoints: /start /stop /block /unblock /renew /status /history /healthz /metrics /events /locks /freezes /webhooks /backup,
/locks/NAME/{start,stop,renew,block,unblock,status,history,events}, and a page at / (see docs/endpoints.md).
`;

const EXIT_USAGE = 2;

async function main(argv: string[]): Promise<number> {
  startupStep("modules evaluated");
  const [command] = argv;
  if (command === "--help" || command === "-h" || command === "help") return print(USAGE);
  if (command === "--version" || command === "-v") return print(`releasestatus ${pkg.version}\n`);
  // The client commands are loaded only when asked for, so the daemon starts without them.
  if (command === "healthcheck") return (await import("./src/client.ts")).healthcheck();
  if (command === "run") return (await import("./src/client.ts")).run(argv.slice(1));
  if (command === "status") return (await import("./src/client.ts")).status(argv.slice(1));
  if (command === "backup") return (await import("./src/client.ts")).backup(argv.slice(1));
  if (command === "__watchdog") return (await import("./src/client.ts")).watchdog();
  if (command === "check-config") return (await import("./src/admin.ts")).checkConfig(argv.slice(1));
  if (command === "token") return (await import("./src/admin.ts")).makeToken(argv.slice(1));
  if (command === "webhook-test") return (await import("./src/admin.ts")).webhookTest(argv.slice(1));
  if (command !== undefined && command !== "serve")
    return fail(`unknown command ${JSON.stringify(command)}: run 'releasestatus --help' to see the commands`);
  // Without a handler SIGHUP would kill the daemon: installed before anything is read, it reloads once serving.
  process.on("SIGHUP", () => reloadNow());
  let cfg: Config;
  try {
    cfg = readConfig(process.env);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
  startupStep("configuration read");
  return serve(cfg);
}

let reloadNow = () => {}; // SIGHUP: nothing until the daemon serves, then a reload

async function serve(cfg: Config): Promise<number> {
  const log = createLog(cfg.logFormat);
  let store: Store;
  try {
    store = await openStore(cfg);
  } catch (e) {
    if (e instanceof StoreOpenError) return fail(e.message);
    throw e;
  }
  for (const notice of store.notices ?? []) log.warn(notice);
  startupStep(`store opened: ${store.description}`);
  if (!store.health().readable) log.warn(`${store.description} cannot be reached yet: answering storage until it can`);
  // The one engine, given all it needs now: the configuration's functions read cfg at each decision (a reload
  // changes it), and the calendar's frozenAt answers from the windows keepCalendar below starts with.
  const engine = createEngine({
    store,
    clock: systemClock,
    limitOf: (lock) => declaredLock(cfg, lock)?.limit ?? 1,
    newest: (lock) => declaredLock(cfg, lock)?.queue === "newest",
    childrenOf: (lock) => declaredChildren(cfg, lock),
    storageFailure: (problem) => log.refusal("storage", () => `could not save the release state: ${problem}`),
    frozen: frozenAt,
  });
  engine.onCommit((c) => {
    if (c.remote) return; // each replica logs and counts its own changes
    observe(c);
    for (const e of c.events)
      log.info(describeEvent(e), () => ({
        event: e.kind,
        lock: e.lock,
        releaseId: e.releaseId,
        name: e.name,
        reason: e.reason,
        ...(e.by === undefined ? {} : { by: e.by }),
      }));
  });
  const { state, expired } = await engine.open();
  // A lock with two declared children or more is shown as a pool on the board, even before it is used
  // (one declared child, such as staging/devices of limit 3, is that lock's own tile, not a pool's).
  const pools = () => {
    const parents = cfg.declared.map((l) => l.name.slice(0, l.name.lastIndexOf("/"))).filter(Boolean);
    return [...new Set(parents)].filter((p) => declaredChildren(cfg, p).length > 1);
  };
  startupStep("engine opened");
  logRestored(log, state, expired);
  learnFromHistory(await engine.history(1000).catch(() => []));
  startupStep("history read");
  await keepCalendar(engine, cfg.freezes, systemClock);
  await startWebhooks(cfg, engine, store, log);
  startupStep("calendar and webhooks started");

  let server: ReturnType<typeof startServer>;
  try {
    server = startServer(cfg, log, engine, {
      describe: (lock) => declaredLock(cfg, lock)?.description ?? "",
      pools,
      named: () => [...(cfg.locks ?? []), ...cfg.declared.map((l) => l.name)],
      allowed: (lock) => lockAllowed(cfg, lock),
    });
  } catch (e) {
    await store.close();
    const inUse = (e as { code?: string }).code === "EADDRINUSE" || /in use/i.test((e as Error).message);
    return fail(
      inUse
        ? `port ${cfg.port} is already in use (another releasestatus?): stop it, or choose another RS_PORT`
        : `cannot listen on ${cfg.host}:${cfg.port}: ${(e as Error).message}`,
    );
  }
  startupStep("listening");
  log.info(`releasestatus ${pkg.version} listening on ${cfg.host}:${server.port}, state in ${store.description}`);
  void fetchTrustedKeys(cfg, log);
  if (!closed(cfg.access))
    log.warn(
      "no token is set (RS_TOKEN or RS_CONFIG): anyone who can reach this port can start, stop and block releases",
    );

  return new Promise((resolve) => {
    reloadNow = () => reload(cfg, log, engine, store);
    let stopping = false;
    const shutdown = async (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info(`${signal} received: answering waiters, finishing requests in flight, then exiting`);
      stopCalendar();
      if (cfg.webhooks.length) (await import("./src/notify/deliver.ts")).stopDelivery();
      await engine.close();
      closeEventStreams();
      const force = setTimeout(() => server.stop(true), 2000); // a client that will not finish is cut
      await server.stop();
      clearTimeout(force);
      await store.close();
      log.info("stopped");
      resolve(0);
    };
    process.on("SIGTERM", () => shutdown("SIGTERM"));
    process.on("SIGINT", () => shutdown("SIGINT"));
  });
}

/**
 * SIGHUP: reads the configuration again (the file and RS_TOKEN_FILE). A valid one takes effect at once,
 * keeping every release and waiter; an invalid one is refused and the running one stays.
 */
function reload(cfg: Config, log: Log, engine: Engine, store: Store) {
  let changes: ReturnType<typeof applyReload>;
  const before = cfg.access;
  try {
    changes = applyReload(cfg, readConfig(process.env));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    log.error(`SIGHUP received: the configuration was not reloaded, the running one stays: ${e.message}`);
    return;
  }
  const { changed, needRestart } = changes;
  // Who may read changed: open event streams end, and their readers come back with a token that still works.
  const readers = (a: Config["access"]) =>
    `${a.read} ${[...a.tokens.keys()].sort().join()} ${a.trust.map(describeTrust).join()}`;
  if (readers(before) !== readers(cfg.access)) closeEventStreams();
  replaceCalendar(cfg.freezes);
  void fetchTrustedKeys(cfg, log);
  void startWebhooks(cfg, engine, store, log);
  log.info(`SIGHUP received: configuration reloaded: ${changed.length ? changed.join("; ") : "nothing changed"}`);
  if (needRestart.length) log.warn(`SIGHUP received: these take effect only on a restart: ${needRestart.join(", ")}`);
}

/**
 * Fetches the keys of each issuer a [[trust]] names, in the background, and logs what it found: the first
 * job need not wait, and an issuer that cannot be reached delays nothing (its jobs are refused until it can).
 */
async function fetchTrustedKeys(cfg: Config, log: Log) {
  if (cfg.access.trust.length === 0) return;
  const [{ warmUp }, { keySources }] = await Promise.all([import("./src/oidc.ts"), import("./src/trust.ts")]);
  for (const line of await warmUp(keySources(cfg.access.trust)))
    if (line.startsWith("cannot")) log.warn(line);
    else log.info(line);
}

/** Delivers events to the configuration's webhooks; the delivery code is loaded only when there are some. */
let delivering = false;
async function startWebhooks(cfg: Config, engine: Engine, store: Store, log: Log) {
  if (cfg.webhooks.length === 0 && !delivering) return;
  delivering = true;
  const { deliver } = await import("./src/notify/deliver.ts");
  await deliver(cfg.webhooks, { engine, outbox: store.outbox, clock: systemClock, log, backlog: cfg.webhookBacklog });
}

function logRestored(log: Log, state: State, expired: Event[]) {
  for (const e of expired)
    log.info(`${describeEvent(e)} while the daemon was down`, { event: e.kind, releaseId: e.releaseId });
  const { release } = state;
  const blocked = blockOn(state);
  if (!release && !blocked) return;
  const endedNow = expired.some((e) => e.releaseId === release?.id);
  const parts = [
    release
      ? describeRelease(release) + (endedNow ? ", whose lease ran out while the daemon was down: it is over now" : "")
      : "no release running",
    blocked ? describeBlock(blocked.block, blocked.lock) : "releasing open",
  ];
  log.info(`restored: ${parts.join("; ")}`, { event: "restored" });
}

function fail(message: string): number {
  console.error(`releasestatus: ${message}`);
  return EXIT_USAGE;
}

// No top-level await: the binary is built with --bytecode, which needs a CommonJS-shaped entry.
main(process.argv.slice(2)).then((code) => process.exit(code));
