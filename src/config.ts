// Settings come from the environment, as in the original: RS_PORT is required,
// everything else has a default. A bad value is one clear line and exit code 2.
import type { LogFormat } from "./log.ts";
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { wholeNumber } from "./numbers.ts";
import { readSecretFile } from "./terminal.ts";

export type Config = {
  port: number;
  host: string;
  db: string;
  historyLimit: number;
  ttlSeconds: number | null; // lease given to a /start without ttl=; null: releases never expire
  maxWaitSeconds: number;
  token: string | null;
  logFormat: LogFormat;
  hosts: string[]; // host names a browser may reach the daemon by, besides IP addresses and localhost
  locks: string[] | null; // the only lock names allowed; null: any, up to maxLocks
  maxLocks: number;
};

export class ConfigError extends Error {}

export const MAX_TTL_SECONDS = 7 * 24 * 3600;

type Env = Record<string, string | undefined>;

export function readConfig(env: Env): Config {
  const rawPort = env.RS_PORT;
  if (rawPort === undefined || rawPort === "")
    throw new ConfigError("RS_PORT is not set: say which port to listen on, e.g. RS_PORT=8080 releasestatus");
  return {
    port: setting("RS_PORT", rawPort, 1, 65535),
    host: env.RS_HOST || "0.0.0.0",
    db: readDb(env),
    historyLimit: setting("RS_HISTORY_LIMIT", env.RS_HISTORY_LIMIT ?? "10000", 1, 10_000_000),
    ttlSeconds: env.RS_TTL ? setting("RS_TTL", env.RS_TTL, 1, MAX_TTL_SECONDS) : null,
    maxWaitSeconds: setting("RS_MAX_WAIT", env.RS_MAX_WAIT ?? "3600", 0, 7 * 24 * 3600),
    token: readToken(env),
    logFormat: oneOf("RS_LOG_FORMAT", env.RS_LOG_FORMAT || "text", ["text", "json"]) as LogFormat,
    hosts: list("RS_HOSTS", env.RS_HOSTS, HOST_NAME, "host names such as releases.example.com"),
    locks: env.RS_LOCKS === undefined ? null : readLocks(env.RS_LOCKS),
    maxLocks: setting("RS_MAX_LOCKS", env.RS_MAX_LOCKS ?? "1000", 1, 100_000),
  };
}

function setting(name: string, raw: string, min: number, max: number): number {
  const n = wholeNumber(raw, min, max);
  if (n === null)
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected a whole number from ${min} to ${max}`);
  return n;
}

function oneOf(name: string, raw: string, allowed: string[]): string {
  if (!allowed.includes(raw))
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not valid: expected one of ${allowed.join(", ")}`);
  return raw;
}

/** A postgres:// URL shares the lock between replicas; anything else is an SQLite file. */
export const isPostgres = (db: string) => /^postgres(ql)?:\/\//.test(db);

// RS_DB_FILE holds RS_DB (a PostgreSQL URL with its password, say) in a file, as container secrets do.
function readDb(env: Env): string {
  if (env.RS_DB && env.RS_DB_FILE) throw new ConfigError("RS_DB and RS_DB_FILE are both set: keep only one");
  const db = env.RS_DB_FILE ? readSecret("RS_DB_FILE", env.RS_DB_FILE) : env.RS_DB || "releasestatus.db";
  if (isPostgres(db) && !URL.canParse(db))
    throw new ConfigError("RS_DB is not a valid PostgreSQL URL: expected postgres://user:password@host:5432/database");
  return db;
}

function readSecret(name: string, path: string): string {
  const read = readSecretFile(path);
  if (read.ok) return read.secret;
  throw new ConfigError(
    `cannot read ${name}=${path} (${read.code}): check the path and that the daemon's user may read it`,
  );
}

// RS_TOKEN_FILE suits container secrets; the file is read once, its trailing newline dropped.
function readToken(env: Env): string | null {
  if (env.RS_TOKEN && env.RS_TOKEN_FILE)
    throw new ConfigError("RS_TOKEN and RS_TOKEN_FILE are both set: keep only one");
  const token = env.RS_TOKEN_FILE ? readSecret("RS_TOKEN_FILE", env.RS_TOKEN_FILE) : (env.RS_TOKEN ?? null);
  if (token === null) return null;
  if (token === "" || /[^\x21-\x7e]/.test(token))
    throw new ConfigError(
      "the token is empty or has spaces or non-ASCII characters: use printable ASCII, e.g. from `openssl rand -hex 32`",
    );
  return token;
}

const HOST_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

// A comma-separated list; every item must match, and an empty item is a mistake, not nothing.
function list(name: string, raw: string | undefined, item: RegExp, what: string): string[] {
  if (raw === undefined) return [];
  const items = raw.split(",").map((s) => s.trim());
  for (const i of items)
    if (!item.test(i))
      throw new ConfigError(
        `${name}=${JSON.stringify(raw)} is not valid: ${JSON.stringify(i)} is not one of ${what}, separated by commas`,
      );
  return items;
}

function readLocks(raw: string): string[] {
  const names = raw.split(",").map((s) => s.trim());
  for (const n of names)
    if (!validLockName(n))
      throw new ConfigError(
        `RS_LOCKS=${JSON.stringify(raw)} is not valid: ${JSON.stringify(n)} is not a lock name (${LOCK_NAME_RULE})`,
      );
  return names;
}
