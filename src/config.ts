// Settings come from the environment, as in the original: RS_PORT is required,
// everything else has a default. A bad value is one clear line and exit code 2.
import type { LogFormat } from "./log.ts";

export type Config = {
  port: number;
  host: string;
  db: string;
  historyLimit: number;
  ttlSeconds: number | null; // lease given to a /start without ttl=; null: releases never expire
  maxWaitSeconds: number;
  token: string | null;
  logFormat: LogFormat;
};

export class ConfigError extends Error {}

export const MAX_TTL_SECONDS = 7 * 24 * 3600;

type Env = Record<string, string | undefined>;

export function readConfig(env: Env): Config {
  const rawPort = env.RS_PORT;
  if (rawPort === undefined || rawPort === "")
    throw new ConfigError("RS_PORT is not set: say which port to listen on, e.g. RS_PORT=8080 releasestatus");
  return {
    port: wholeNumber("RS_PORT", rawPort, 1, 65535),
    host: env.RS_HOST || "0.0.0.0",
    db: readDb(env),
    historyLimit: wholeNumber("RS_HISTORY_LIMIT", env.RS_HISTORY_LIMIT ?? "10000", 1, 10_000_000),
    ttlSeconds: env.RS_TTL ? wholeNumber("RS_TTL", env.RS_TTL, 1, MAX_TTL_SECONDS) : null,
    maxWaitSeconds: wholeNumber("RS_MAX_WAIT", env.RS_MAX_WAIT ?? "3600", 0, 7 * 24 * 3600),
    token: readToken(env),
    logFormat: oneOf("RS_LOG_FORMAT", env.RS_LOG_FORMAT || "text", ["text", "json"]) as LogFormat,
  };
}

function wholeNumber(name: string, raw: string, min: number, max: number): number {
  const n = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || n < min || n > max)
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
  const { readFileSync } = require("node:fs") as typeof import("node:fs"); // loaded only when needed: it slows start-up
  try {
    return readFileSync(path, "utf8").replace(/\r?\n$/, "");
  } catch (e) {
    throw new ConfigError(
      `cannot read ${name}=${path} (${(e as NodeJS.ErrnoException).code ?? "error"}): check the path and that the daemon's user may read it`,
    );
  }
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
