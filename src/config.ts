// Settings come from the environment, as in the original: RS_PORT is required,
// everything else has a default. Lists (tokens, and later webhooks and freeze
// windows) come from a TOML file named by RS_CONFIG, which may also hold the
// single settings; an environment variable wins over the file. A bad value is
// one clear line (with the file's line when it came from the file) and exit code 2.
import {
  type Access,
  closed,
  digestOf,
  everything,
  parseRights,
  parseScope,
  RIGHTS,
  type Right,
  type Token,
} from "./access.ts";
import { parseWindow, type Window } from "./calendar.ts";
import type { LogFormat } from "./log.ts";
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { labelled, parseWebhook, type Webhook } from "./notify/webhook.ts";
import { wholeNumber } from "./numbers.ts";
import { readSecretFile } from "./terminal.ts";
import { parseTrust, type Trust } from "./trust.ts";
import { visible } from "./visible.ts";

export type Config = {
  port: number;
  host: string;
  db: string;
  dbPool: number; // PostgreSQL: the most connections a replica opens for its work (LISTEN takes one more)
  historyLimit: number;
  ttlSeconds: number | null; // lease given to a /start without ttl=; null: releases never expire
  maxWaitSeconds: number;
  logFormat: LogFormat;
  hosts: string[]; // host names a browser may reach the daemon by, besides IP addresses and localhost
  locks: string[] | null; // the only lock names allowed; null: any, up to maxLocks
  maxLocks: number;
  maxStreams: number; // event streams (/events) open at once
  access: Access; // the tokens (RS_TOKEN's and the file's) and whether reading needs one
  freezes: Window[]; // the freeze calendar, in the file's order
  webhooks: Webhook[]; // where events are sent
  webhookBacklog: number; // events a webhook may fall behind before the oldest are dropped
  declared: DeclaredLock[]; // the file's [[lock]] tables: locks with a limit or a description
  file: string | null; // RS_CONFIG: re-read on SIGHUP
};

/** A lock the file declares: how many releases may hold it at once, and words for the page. */
export type DeclaredLock = { name: string; limit: number; description: string; queue: Queue };

/**
 * How a lock's line is served: "fifo", first come first served (the default), or "newest", where a start of
 * a newer version takes the place of the older waiters of the same claim, and one older than the last
 * released is refused stale (README: On a busy branch).
 */
export type Queue = "fifo" | "newest";
const QUEUES: readonly Queue[] = ["fifo", "newest"];

export const MAX_LIMIT = 1000;

/** The [[lock]] table that declares `name`, if any: read live, so a reload changes limits at once. */
export const declaredLock = (cfg: Pick<Config, "declared">, name: string): DeclaredLock | undefined =>
  cfg.declared.find((l) => l.name === name);

/** Whether a start may be asked of a lock: any, unless RS_LOCKS lists the names allowed (and [[lock]] adds to them). */
export const lockAllowed = (cfg: Pick<Config, "locks" | "declared">, name: string): boolean =>
  cfg.locks === null || cfg.locks.includes(name) || declaredLock(cfg, name) !== undefined;

/** The declared locks right under `parent` (`devices/pixel-7` under `devices`): what a pool of it may take. */
export const declaredChildren = (cfg: Config, parent: string): string[] =>
  cfg.declared
    .map((l) => l.name)
    .filter((name) => name.startsWith(`${parent}/`) && !name.slice(parent.length + 1).includes("/"));

// Messages quote what the file or the environment holds: made visible once, here, for all of them.
export class ConfigError extends Error {
  constructor(message: string) {
    super(visible(message));
  }
}

export const MAX_TTL_SECONDS = 7 * 24 * 3600;

type Env = Record<string, string | undefined>;

/** Where each setting that came from the file was written: "/etc/releasestatus.toml:3: port". */
type Origins = Map<string, string>;

export function readConfig(env: Env): Config {
  refuseUnknownVariables(env);
  if (env.RS_CONFIG === "") throw new ConfigError("RS_CONFIG is empty: name a TOML file, or leave it unset");
  const file = env.RS_CONFIG ? readConfigFile(env.RS_CONFIG) : null;
  const set: Env = { ...file?.settings };
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v !== "") set[k] = v; // the environment wins
  const from: Origins = new Map();
  for (const [k, where] of file?.origins ?? []) if (!env[k]) from.set(k, where);
  const rawPort = set.RS_PORT;
  if (rawPort === undefined || rawPort === "")
    throw new ConfigError("RS_PORT is not set: say which port to listen on, e.g. RS_PORT=8080 releasestatus");
  const token = readToken(set, from);
  return {
    port: setting(from, "RS_PORT", rawPort, 1, 65535),
    host: set.RS_HOST || "0.0.0.0",
    db: readDb(set, from),
    dbPool: setting(from, "RS_DB_POOL", set.RS_DB_POOL ?? "4", 1, 100),
    historyLimit: setting(from, "RS_HISTORY_LIMIT", set.RS_HISTORY_LIMIT ?? "10000", 1, 10_000_000),
    ttlSeconds: set.RS_TTL ? setting(from, "RS_TTL", set.RS_TTL, 1, MAX_TTL_SECONDS) : null,
    maxWaitSeconds: setting(from, "RS_MAX_WAIT", set.RS_MAX_WAIT ?? "3600", 0, 7 * 24 * 3600),
    logFormat: oneOf(from, "RS_LOG_FORMAT", set.RS_LOG_FORMAT || "text", ["text", "json"]) as LogFormat,
    hosts: list(from, "RS_HOSTS", set.RS_HOSTS, HOST_NAME, "host names such as releases.example.com"),
    locks: set.RS_LOCKS === undefined ? null : readLocks(from, set.RS_LOCKS),
    maxLocks: setting(from, "RS_MAX_LOCKS", set.RS_MAX_LOCKS ?? "1000", 1, 100_000),
    maxStreams: setting(from, "RS_MAX_STREAMS", set.RS_MAX_STREAMS ?? "100", 1, 100_000),
    access: accessFrom(token, file),
    freezes: file?.freezes ?? [],
    webhooks: labelled(file?.webhooks ?? []),
    webhookBacklog: setting(from, "RS_WEBHOOK_BACKLOG", set.RS_WEBHOOK_BACKLOG ?? "10000", 1, 1_000_000),
    declared: file?.locks ?? [],
    file: env.RS_CONFIG || null,
  };
}

// Every RS_ variable the daemon reads: the file's settings, and those only the environment can give.
const settingNames = () => ["RS_CONFIG", "RS_TOKEN", ...Object.values(FILE_SETTINGS).map((s) => s.env)];
// RS_ variables that are not the daemon's but may well be in its environment: the client's (run, status)
// and those a command run by `releasestatus run` is given, and test harnesses' (RS_TEST_DB, RS_TEST_IMAGE).
const NOT_SETTINGS = ["RS_URL", "RS_RELEASE_ID"];

/** A misspelt setting (RS_POTR) would be silently ignored and the default used: it stops start-up instead. */
function refuseUnknownVariables(env: Env) {
  const settings = settingNames();
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith("RS_") || settings.includes(name) || NOT_SETTINGS.includes(name)) continue;
    if (name.startsWith("RS_TEST_")) continue;
    const near = closest(name, settings);
    throw new ConfigError(
      `${name} is not a setting${near ? `; did you mean ${near}? Correct` : ": correct"} or unset it ('releasestatus --help' lists the settings)`,
    );
  }
}

// The setting within two edits (a swapped, missing or wrong letter or two) of a misspelt name, if one is.
function closest(name: string, names: string[]): string | null {
  let best: { name: string; distance: number } | null = null;
  for (const n of names) {
    const distance = editDistance(name, n);
    if (distance <= 2 && (best === null || distance < best.distance)) best = { name: n, distance };
  }
  return best?.name ?? null;
}

// Optimal string alignment distance: a swap of two neighbouring letters (POTR for PORT) counts as one edit.
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i || j));
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++) {
      const row = d[i] as number[];
      const up = d[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min((up[j] as number) + 1, (row[j - 1] as number) + 1, (up[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1);
    }
  return (d[a.length] as number[])[b.length] as number;
}

// How a setting is named in an error: where the file says it, else as the environment variable.
const named = (from: Origins, name: string, raw: string) => from.get(name) ?? `${name}=${JSON.stringify(raw)}`;

function setting(from: Origins, name: string, raw: string, min: number, max: number): number {
  const n = wholeNumber(raw, min, max);
  if (n === null)
    throw new ConfigError(`${named(from, name, raw)} is not valid: expected a whole number from ${min} to ${max}`);
  return n;
}

function oneOf(from: Origins, name: string, raw: string, allowed: string[]): string {
  if (!allowed.includes(raw))
    throw new ConfigError(`${named(from, name, raw)} is not valid: expected one of ${allowed.join(", ")}`);
  return raw;
}

/** A postgres:// URL shares the lock between replicas; anything else is an SQLite file. */
export const isPostgres = (db: string) => /^postgres(ql)?:\/\//.test(db);

// RS_DB_FILE holds RS_DB (a PostgreSQL URL with its password, say) in a file, as container secrets do.
function readDb(set: Env, from: Origins): string {
  if (set.RS_DB && set.RS_DB_FILE) throw new ConfigError("RS_DB and RS_DB_FILE are both set: keep only one");
  const db = set.RS_DB_FILE ? readSecret(from, "RS_DB_FILE", set.RS_DB_FILE) : set.RS_DB || "releasestatus.db";
  if (isPostgres(db) && !URL.canParse(db))
    throw new ConfigError("RS_DB is not a valid PostgreSQL URL: expected postgres://user:password@host:5432/database");
  return db;
}

function readSecret(from: Origins, name: string, path: string): string {
  const read = readSecretFile(path);
  if (read.ok) return read.secret;
  throw new ConfigError(
    `cannot read ${from.get(name) ?? `${name}=${path}`} (${read.code}): check the path and that the daemon's user may read it`,
  );
}

// RS_TOKEN_FILE suits container secrets; the file is read at start and on each reload, its trailing newline dropped.
function readToken(set: Env, from: Origins): string | null {
  if (set.RS_TOKEN && set.RS_TOKEN_FILE)
    throw new ConfigError("RS_TOKEN and RS_TOKEN_FILE are both set: keep only one");
  const token = set.RS_TOKEN_FILE ? readSecret(from, "RS_TOKEN_FILE", set.RS_TOKEN_FILE) : (set.RS_TOKEN ?? null);
  if (token === null) return null;
  if (token === "" || /[^\x21-\x7e]/.test(token))
    throw new ConfigError(
      "the token is empty or has spaces or non-ASCII characters: use printable ASCII, e.g. from `openssl rand -hex 32`",
    );
  return token;
}

const HOST_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

// A comma-separated list; every item must match, and an empty item is a mistake, not nothing.
function list(from: Origins, name: string, raw: string | undefined, item: RegExp, what: string): string[] {
  if (raw === undefined) return [];
  const items = raw.split(",").map((s) => s.trim());
  for (const i of items)
    if (!item.test(i))
      throw new ConfigError(
        `${named(from, name, raw)} is not valid: ${JSON.stringify(i)} is not one of ${what}, separated by commas`,
      );
  return items;
}

function readLocks(from: Origins, raw: string): string[] {
  const names = raw.split(",").map((s) => s.trim());
  for (const n of names)
    if (!validLockName(n))
      throw new ConfigError(
        `${named(from, "RS_LOCKS", raw)} is not valid: ${JSON.stringify(n)} is not a lock name (${LOCK_NAME_RULE})`,
      );
  return names;
}

function accessFrom(token: string | null, file: ConfigFile | null): Access {
  if (file?.read === "token" && file.tokens.length === 0 && file.trust.length === 0 && token === null)
    throw new ConfigError(
      `${file.path}: read = "token" with no token at all would close reading but leave changes open to anyone: add [[token]] tables or RS_TOKEN`,
    );
  const tokens = new Map<string, Token>();
  for (const t of file?.tokens ?? []) tokens.set(t.sha256, t);
  if (token !== null) {
    const digest = digestOf(token);
    if (tokens.has(digest))
      throw new ConfigError(
        `RS_TOKEN is also in ${file?.path} as ${tokens.get(digest)?.who}'s token: a token must stand for one holder`,
      );
    tokens.set(digest, everything(digest));
  }
  return { tokens, read: file?.read ?? "open", trust: file?.trust ?? [] };
}

// ---- the configuration file ----

/** What RS_CONFIG holds, checked: single settings as the environment would give them, and the lists. */
export type ConfigFile = {
  path: string;
  settings: Env;
  origins: Origins;
  tokens: Token[];
  read: "open" | "token";
  freezes: Window[];
  webhooks: Omit<Webhook, "label">[];
  locks: DeclaredLock[];
  trust: Trust[]; // CI jobs let in by their ID tokens
};

// The file's single settings, and the environment variable each stands for.
const FILE_SETTINGS: Record<string, { env: string; kind: "number" | "string" | "list" }> = {
  port: { env: "RS_PORT", kind: "number" },
  host: { env: "RS_HOST", kind: "string" },
  db: { env: "RS_DB", kind: "string" },
  db_file: { env: "RS_DB_FILE", kind: "string" },
  db_pool: { env: "RS_DB_POOL", kind: "number" },
  history_limit: { env: "RS_HISTORY_LIMIT", kind: "number" },
  ttl: { env: "RS_TTL", kind: "number" },
  max_wait: { env: "RS_MAX_WAIT", kind: "number" },
  token_file: { env: "RS_TOKEN_FILE", kind: "string" },
  log_format: { env: "RS_LOG_FORMAT", kind: "string" },
  hosts: { env: "RS_HOSTS", kind: "list" },
  locks: { env: "RS_LOCKS", kind: "list" },
  max_locks: { env: "RS_MAX_LOCKS", kind: "number" },
  max_streams: { env: "RS_MAX_STREAMS", kind: "number" },
  webhook_backlog: { env: "RS_WEBHOOK_BACKLOG", kind: "number" },
};
const TOKEN_KEYS = ["who", "can", "locks", "sha256"];
const EMPTY_SHA256 = digestOf("");

/** Reads and checks the whole file; a problem is a ConfigError "FILE:LINE: what is wrong". */
export function readConfigFile(path: string): ConfigFile {
  const read = readSecretFile(path);
  if (!read.ok)
    throw new ConfigError(
      `cannot read RS_CONFIG=${path} (${read.code}): check the path and that the daemon's user may read it`,
    );
  return parseConfigFile(path, read.secret);
}

/** Checks the text of a configuration file; `path` names it in errors. */
export function parseConfigFile(path: string, source: string): ConfigFile {
  const problem = (line: number, what: string) => new ConfigError(`${path}:${line}: ${what}`);
  let doc: Record<string, unknown>;
  try {
    doc = Bun.TOML.parse(source) as Record<string, unknown>;
  } catch (e) {
    const what = (e as Error).message.replace(/^TOML Parse error: /, "");
    const line = syntaxErrorLine(source, (e as Error).message);
    throw problem(line, `not valid TOML: ${what}${redefinedSetting(source, what, line)}`);
  }
  const at = (table: string | null, index: number, key: string | null) => lineOf(source, table, index, key);
  const file: ConfigFile = {
    path,
    settings: {},
    origins: new Map(),
    tokens: [],
    read: "open",
    freezes: [],
    webhooks: [],
    locks: [],
    trust: [],
  };
  for (const [key, value] of Object.entries(doc)) {
    const line = at(null, 0, key);
    if (key === "token") {
      if (!Array.isArray(value)) throw problem(line, "token must be a list of tables: write each as [[token]]");
      value.forEach((raw, i) => {
        file.tokens.push(readTokenTable(raw, (k) => at("token", i, k), problem, source));
      });
      continue;
    }
    if (key === "read") {
      if (value !== "open" && value !== "token")
        throw problem(line, `read = ${show(value)} is not valid: expected "open" (the default) or "token"`);
      file.read = value;
      continue;
    }
    if (key === "freeze") {
      if (!Array.isArray(value)) throw problem(line, "freeze must be a list of tables: write each as [[freeze]]");
      value.forEach((raw, i) => {
        const window = typeof raw === "object" && raw !== null ? parseWindow(raw as Record<string, unknown>) : "";
        if (typeof window !== "string") {
          file.freezes.push(window);
          return;
        }
        // The problem names its key first ("every = …", "until is before from"): point at that line.
        const key = /^(?:unknown key )?([a-z_]+)\b/.exec(window)?.[1] ?? null;
        throw problem(
          at("freeze", i, key),
          settingInTable(window, source) ?? (window || "each [[freeze]] must be a table with a reason and a schedule"),
        );
      });
      continue;
    }
    if (key === "webhook") {
      if (!Array.isArray(value)) throw problem(line, "webhook must be a list of tables: write each as [[webhook]]");
      value.forEach((raw, i) => {
        const hook = typeof raw === "object" && raw !== null ? parseWebhook(raw as Record<string, unknown>) : "";
        if (typeof hook !== "string" && file.webhooks.some((h) => h.key === hook.key))
          throw problem(at("webhook", i, "url"), "this url and format are also an earlier [[webhook]]'s: keep one");
        if (typeof hook !== "string") {
          file.webhooks.push(hook);
          return;
        }
        const key = /^([a-z_]+)\b/.exec(hook)?.[1] ?? null;
        throw problem(
          at("webhook", i, key),
          settingInTable(hook, source) ?? (hook || "each [[webhook]] must be a table with a url"),
        );
      });
      continue;
    }
    if (key === "lock") {
      if (!Array.isArray(value)) throw problem(line, "lock must be a list of tables: write each as [[lock]]");
      value.forEach((raw, i) => {
        const declared = readLockTable(raw, (k) => at("lock", i, k), problem, source);
        if (file.locks.some((l) => l.name === declared.name))
          throw problem(at("lock", i, "name"), `lock ${declared.name} is also an earlier [[lock]]'s: keep one`);
        file.locks.push(declared);
      });
      continue;
    }
    if (key === "trust") {
      if (!Array.isArray(value)) throw problem(line, "trust must be a list of tables: write each as [[trust]]");
      value.forEach((raw, i) => {
        const trust =
          typeof raw === "object" && raw !== null ? parseTrust(raw as Record<string, unknown>, TRUST_READING) : "";
        const key = typeof trust === "string" ? (/^([a-z_]+)\b/.exec(trust)?.[1] ?? null) : "jwks_file";
        // A problem in [trust.claims] is pointed at its [[trust]]: the sub-table has no line of its own to find.
        const at = (k: string | null) => lineOf(source, "trust", i, k === "claims" ? null : k);
        if (typeof trust === "string")
          throw problem(
            at(key),
            trust || "each [[trust]] must be a table with issuer, audience, can, locks and [trust.claims]",
          );
        // One issuer's keys come from one place: its tables must agree on jwks_file.
        const other = file.trust.find((t) => t.issuer === trust.issuer && t.jwksFile !== trust.jwksFile);
        if (other)
          throw problem(
            at(key),
            `jwks_file differs from an earlier [[trust]] for ${trust.issuer}: give every table of one issuer the same (or none)`,
          );
        file.trust.push(trust);
      });
      continue;
    }
    const known = FILE_SETTINGS[key];
    if (!known)
      throw problem(
        line,
        key === "token_sha256" || key === "rs_token"
          ? `${key} is not a setting: the file holds no plain tokens; list them as [[token]] tables with their sha256`
          : `${key} is not a setting: expected one of ${[...Object.keys(FILE_SETTINGS), "read", "[[token]]", "[[freeze]]", "[[webhook]]", "[[lock]]", "[[trust]]"].join(", ")}`,
      );
    file.settings[known.env] = settingText(key, value, known.kind, (what) => problem(line, what));
    file.origins.set(known.env, `${path}:${line}: ${key} = ${show(value)}`);
  }
  refuseTwice(
    file.tokens,
    (t) => t.sha256,
    (first, i) =>
      problem(
        at("token", i, "sha256"),
        `this sha256 is also token #${first + 1}'s: each token needs its own (make one with 'releasestatus token')`,
      ),
  );
  // The history records a token's who as "by": two tokens with one who could not be told apart there.
  refuseTwice(
    file.tokens,
    (t) => t.who,
    (first, i) =>
      problem(
        at("token", i, "who"),
        `who = ${show(file.tokens[i]?.who)} is also token #${first + 1}'s: each holder has one token (to replace a token, change its sha256)`,
      ),
  );
  return file;
}

// The first table that repeats a value of an earlier one is a problem, naming the earlier one.
function refuseTwice<T>(tables: T[], value: (t: T) => string, problem: (first: number, i: number) => Error) {
  const seen = new Map<string, number>();
  tables.forEach((t, i) => {
    const first = seen.get(value(t));
    if (first !== undefined) throw problem(first, i);
    seen.set(value(t), i);
  });
}

// ---- a single setting written below a table ----
// TOML reads every key after a [[table]] header as part of that table, to the next header: a setting
// appended after `releasestatus token … >> FILE` lands in the last [[token]]. The errors say where it belongs.

const isSetting = (key: string) => Object.hasOwn(FILE_SETTINGS, key) || key === "read";

/** The file's first table header as written ("[[token]]"): settings go above it. */
const firstTable = (source: string) => /^\s*(\[\[?\s*[A-Za-z0-9_.-]+\s*\]\]?)/m.exec(source)?.[1] ?? "[[token]]";

const belongsAbove = (source: string) =>
  `move it above the first ${firstTable(source)} table (settings go before the first table)`;

/** "port is not a webhook setting" or "unknown key port" about a single setting: where it belongs instead. */
function settingInTable(problem: string, source: string): string | null {
  const key = /^unknown key ([a-z_]+)|^([a-z_]+) is not a [a-z]+ setting/.exec(problem);
  const name = key?.[1] ?? key?.[2];
  return name && isSetting(name) ? `${name} is a setting: ${belongsAbove(source)}` : null;
}

/** "Cannot redefine key 'locks'" below a table: maybe the setting locks, read as the table's. */
function redefinedSetting(source: string, what: string, line: number): string {
  const key = /Cannot redefine key '([a-z_]+)'/.exec(what)?.[1];
  const tableLine = source.split("\n").findIndex((l) => /^\s*\[/.test(l)) + 1;
  if (!key || !isSetting(key) || tableLine === 0 || line <= tableLine) return "";
  return `: if this ${key} is meant as the setting, ${belongsAbove(source)}`;
}

const show = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? "[…]" : String(v));

// A single setting as the environment would give it: numbers as digits, lists joined by commas.
function settingText(key: string, value: unknown, kind: "number" | "string" | "list", fail: (w: string) => Error) {
  if (kind === "number") {
    if (typeof value === "number" && Number.isInteger(value)) return String(value);
    throw fail(`${key} = ${show(value)} is not valid: expected a whole number, without quotes`);
  }
  if (kind === "string") {
    if (typeof value === "string" && value !== "") return value;
    throw fail(`${key} = ${show(value)} is not valid: expected a non-empty string in quotes`);
  }
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "string" && !v.includes(",")))
    return value.join(",");
  throw fail(`${key} = ${show(value)} is not valid: expected a non-empty list of strings, e.g. ["a", "b"]`);
}

/** What is wrong with a list of strings that must each pass: null when nothing, else the entry at fault or "not a list". */
function badEntry(list: unknown, valid: (entry: string) => boolean): { entry: string } | "not a list" | null {
  if (!Array.isArray(list) || list.length === 0) return "not a list";
  const bad = list.find((e) => typeof e !== "string" || !valid(e));
  return bad === undefined ? null : { entry: typeof bad === "string" ? JSON.stringify(bad) : String(bad) };
}

// A short list as written, so that its bad entry can be seen in place; a long one as […].
const listed = (v: unknown) =>
  Array.isArray(v) && v.length <= 10
    ? `[${v.map((e) => (typeof e === "string" ? JSON.stringify(e) : String(e))).join(", ")}]`
    : show(v);

const LOCK_KEYS = ["name", "limit", "description", "queue"];

// A [[lock]] table: a lock name, a limit from 1 to MAX_LIMIT (1 when left out), and words for the page.
function readLockTable(
  raw: unknown,
  line: (key: string | null) => number,
  problem: (line: number, what: string) => Error,
  source: string,
): DeclaredLock {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw problem(line(null), 'each [[lock]] must be a table with a name, e.g. name = "staging/devices", limit = 3');
  const t = raw as Record<string, unknown>;
  for (const key of Object.keys(t))
    if (!LOCK_KEYS.includes(key)) {
      const unknown = `unknown key ${key} in [[lock]]: expected ${LOCK_KEYS.join(", ")}`;
      throw problem(line(key), settingInTable(unknown, source) ?? unknown);
    }
  const { name, limit = 1, description = "", queue = "fifo" } = t;
  if (typeof name !== "string" || !validLockName(name))
    throw problem(
      line("name"),
      `name = ${show(name)} is not valid: expected a lock name in quotes (${LOCK_NAME_RULE}), e.g. name = "staging/devices"`,
    );
  if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT)
    throw problem(
      line("limit"),
      `limit = ${show(limit)} is not valid: expected how many releases may hold ${name} at once, a whole number from 1 to ${MAX_LIMIT} without quotes`,
    );
  if (typeof description !== "string")
    throw problem(line("description"), `description = ${show(description)} is not valid: expected words in quotes`);
  if (!QUEUES.includes(queue as Queue))
    throw problem(
      line("queue"),
      `queue = ${show(queue)} is not valid: expected "fifo" (first come, first served; the default) or "newest" (only the newest version waiting is deployed), in quotes`,
    );
  return { name, limit, description, queue: queue as Queue };
}

// Plain ASCII: a name that looks like another (a Cyrillic "о", a trailing space) must not pass for it in the history.
const WHO = /^[A-Za-z0-9]([A-Za-z0-9 ._@+-]{0,62}[A-Za-z0-9._@+-])?$/;

function readTokenTable(
  raw: unknown,
  line: (key: string | null) => number,
  problem: (line: number, what: string) => Error,
  source: string,
): Token {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw problem(line(null), "each [[token]] must be a table with who, can, locks and sha256");
  const t = raw as Record<string, unknown>;
  for (const key of Object.keys(t))
    if (!TOKEN_KEYS.includes(key)) {
      const unknown = `${key} is not a token setting: expected ${TOKEN_KEYS.join(", ")}`;
      throw problem(line(key), settingInTable(unknown, source) ?? unknown);
    }
  for (const key of TOKEN_KEYS)
    if (!(key in t))
      throw problem(
        line(null),
        `this [[token]] has no ${key}: each needs who, can, locks and sha256 ('releasestatus token' prints one)`,
      );
  const { who, can, locks, sha256 } = t;
  if (typeof who !== "string" || !WHO.test(who))
    throw problem(
      line("who"),
      `who = ${show(who)} is not valid: expected a name of 1 to 64 ASCII letters, digits, inner spaces or . _ @ + - (it is recorded as "by")`,
    );
  if (who.toLowerCase() === "token")
    throw problem(line("who"), `who = ${show(who)} is what RS_TOKEN is recorded as ("token"): choose another name`);
  const rights = parseRights(can);
  if (rights === null) throw problem(line("can"), canProblem(can));
  const scope = parseScope(locks);
  if (scope === null) throw problem(line("locks"), locksProblem(locks));
  if (typeof sha256 !== "string" || !/^[0-9a-fA-F]{64}$/.test(sha256))
    throw problem(
      line("sha256"),
      "sha256 is not valid: expected the 64 hex digits of the token's SHA-256 (never the token itself); 'releasestatus token' prints both",
    );
  // A client that sends "Authorization: Bearer " with nothing after it must not be this holder.
  if (sha256.toLowerCase() === EMPTY_SHA256)
    throw problem(
      line("sha256"),
      "sha256 is the SHA-256 of the empty string, which no token may be: make a token with 'releasestatus token'",
    );
  return { who, can: rights, locks: scope, sha256: sha256.toLowerCase(), named: true };
}

// [[trust]] tables share the checks of can and locks with [[token]].
const TRUST_READING = {
  rights: parseRights,
  scope: parseScope,
  problems: { can: (can: unknown) => canProblem(can), locks: (locks: unknown) => locksProblem(locks) },
  readFile: (path: string) => {
    const read = readSecretFile(path);
    return read.ok ? read.secret : { code: read.code };
  },
};

/** What is wrong with a `can` or a `locks` of a [[token]] or a [[trust]]. */
export function canProblem(can: unknown): string {
  const bad = badEntry(can, (c) => RIGHTS.includes(c as Right));
  const rights = RIGHTS.map((r) => `"${r}"`).join(", ");
  return `can = ${listed(can)} is not valid: ${bad === null || bad === "not a list" ? "expected a non-empty list" : `${bad.entry} is not a right; expected some`} of ${rights}`;
}
export function locksProblem(locks: unknown): string {
  const bad = badEntry(locks, (l) => validLockName(l));
  return `locks = ${listed(locks)} is not valid: ${bad === null || bad === "not a list" ? "" : `${bad.entry} is not a lock name; `}expected ["*"] for every lock and the root, or a list of lock names (${LOCK_NAME_RULE})`;
}

/** The line (1-based) of `key` in the index-th [[table]] (or at the top when table is null); else that table's line. */
function lineOf(source: string, table: string | null, index: number, key: string | null): number {
  const lines = source.split("\n");
  let current: string | null = null;
  let count = -1;
  let tableLine = 1;
  for (let i = 0; i < lines.length; i++) {
    const text = (lines[i] ?? "").trim();
    const header = /^\[\[\s*([A-Za-z0-9_-]+)\s*\]\]/.exec(text) ?? /^\[\s*([A-Za-z0-9_.-]+)\s*\]/.exec(text);
    if (header) {
      current = header[1] ?? null;
      if (current === table) count++;
      if (current === table && count === index) tableLine = i + 1;
      continue;
    }
    const inPlace = table === null ? current === null : current === table && count === index;
    if (inPlace && key !== null && new RegExp(`^["']?${key}["']?\\s*=`).test(text)) return i + 1;
  }
  return table === null && key !== null ? firstLineOf(lines, key) : tableLine;
}

// A top-level key written as a table ([[token]]) has no "key =" line: find its header.
function firstLineOf(lines: string[], key: string): number {
  const i = lines.findIndex((l) => new RegExp(`^\\s*\\[\\[?\\s*${key}\\s*\\]`).test(l));
  return i < 0 ? 1 : i + 1;
}

// Bun's TOML parser does not say where it stopped. Re-parsing every prefix of the file to find out
// is quadratic (a 6,000-line file held a reload for seconds), so the file is cut into statements (a
// table header, or a key with its whole value) and each is parsed alone: every parse is small, and
// together they read the file once. Only an error between statements (a key or table defined twice)
// needs them together: then a binary search over whole statements, O(n log n).
function syntaxErrorLine(source: string, message: string): number {
  const lines = source.split("\n");
  const all = statements(lines);
  const text = (from: number, to: number) => `${lines.slice(from, to).join("\n")}\n`;
  const alone = all.find((s) => failure(text(s.from, s.to)) === message);
  if (alone) return alone.from + firstFailingLine(lines.slice(alone.from, alone.to), message) + 1;
  // The first statement with which the file so far fails: before it, every statement is valid on its own.
  let [good, bad] = [0, all.length];
  while (bad - good > 1) {
    const mid = Math.floor((good + bad) / 2);
    if (failure(text(0, all[mid - 1]?.to ?? 0)) === null) good = mid;
    else bad = mid;
  }
  return (all[bad - 1]?.from ?? lines.length - 1) + 1;
}

const failure = (text: string): string | null => {
  try {
    Bun.TOML.parse(text);
    return null;
  } catch (e) {
    return (e as Error).message;
  }
};

/**
 * The file's statements as line ranges [from, to). A statement starts on a line that is outside any
 * bracket and multi-line string and holds more than a comment; it runs to the next one. Only the
 * shape is followed (strings, comments, brackets): the parser says what is wrong.
 */
function statements(lines: string[]): { from: number; to: number }[] {
  const found: { from: number; to: number }[] = [];
  let depth = 0; // open [ and {
  let multi: '"""' | "'''" | null = null; // inside a multi-line string
  lines.forEach((line, n) => {
    if (depth === 0 && multi === null && !/^\s*(#|$)/.test(line)) {
      const last = found.at(-1);
      if (last) last.to = n;
      found.push({ from: n, to: lines.length });
    }
    for (let i = 0; i < line.length; i++) {
      if (multi !== null) {
        if (multi === '"""' && line[i] === "\\") i++;
        else if (line.startsWith(multi, i)) [multi, i] = [null, i + 2];
        continue;
      }
      const c = line[i];
      if (c === "#") break;
      if (c === '"' || c === "'") {
        if (line.startsWith(c.repeat(3), i)) [multi, i] = [c === '"' ? '"""' : "'''", i + 2];
        else i = endOfString(line, i);
      } else if (c === "[" || c === "{") depth++;
      else if ((c === "]" || c === "}") && depth > 0) depth--;
    }
  });
  return found;
}

// Where a one-line string that opens at `i` closes (a basic string minds its escapes); the line's end if never.
function endOfString(line: string, i: number): number {
  const quote = line[i];
  for (let j = i + 1; j < line.length; j++) {
    if (quote === '"' && line[j] === "\\") j++;
    else if (line[j] === quote) return j;
  }
  return line.length;
}

// Within one statement (a few lines), the first prefix that fails alike is where the problem is (0-based).
// Each prefix ends with its newline, so that a problem at the end of a line is named on that line.
function firstFailingLine(lines: string[], message: string): number {
  const index = lines.findIndex((_, n) => failure(`${lines.slice(0, n + 1).join("\n")}\n`) === message);
  return Math.max(index, 0);
}

// ---- reloading (SIGHUP) ----

/** Settings a running daemon cannot take on: they need a restart. */
const RESTART_ONLY = ["port", "host", "db", "historyLimit", "logFormat"] as const;

/**
 * Takes on what can change while running (tokens, reading, hosts, locks, limits, leases) from
 * `next` into `cfg`, in place: every request reads `cfg`. Returns what changed, in words without
 * secrets, and what would need a restart.
 */
export function applyReload(cfg: Config, next: Config): { changed: string[]; needRestart: string[] } {
  // A file emptied or cut short by an editor must not open a closed daemon: that takes a restart.
  if (closed(cfg.access) && !closed(next.access))
    throw new ConfigError(
      "the new configuration has no token at all, which would let anyone start, stop and block: if that is meant, restart the daemon with it",
    );
  // The database's URL may hold a password: its change is named, not shown.
  const needRestart = RESTART_ONLY.filter((k) => cfg[k] !== next[k]).map((k) =>
    k === "db" ? "db" : `${k} (${JSON.stringify(cfg[k])} → ${JSON.stringify(next[k])})`,
  );
  const changed = [...tokenChanges(cfg.access, next.access), ...trustChanges(cfg.access.trust, next.access.trust)];
  if (cfg.access.read !== next.access.read) changed.push(`reading is now ${next.access.read}`);
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  for (const k of ["ttlSeconds", "maxWaitSeconds", "hosts", "locks", "maxLocks", "maxStreams", "declared"] as const)
    if (!same(cfg[k], next[k])) changed.push(`${k}: ${JSON.stringify(cfg[k])} → ${JSON.stringify(next[k])}`);
  const windows = (c: Config) => JSON.stringify(c.freezes);
  if (windows(cfg) !== windows(next))
    changed.push(
      `freeze windows: ${cfg.freezes.length} → ${next.freezes.length} (${next.freezes.map((w) => w.reason).join(", ") || "none"})`,
    );
  cfg.freezes = next.freezes;
  const hooks = (c: Config) =>
    c.webhooks.map((h) => `${h.label} ${h.key} ${[...h.events]} ${h.locks} ${h.remindLabel}`).join();
  if (hooks(cfg) !== hooks(next))
    changed.push(`webhooks: ${next.webhooks.map((h) => `${h.label} (${h.format})`).join(", ") || "none"}`);
  cfg.webhooks = next.webhooks;
  cfg.webhookBacklog = next.webhookBacklog;
  cfg.access = next.access;
  cfg.ttlSeconds = next.ttlSeconds;
  cfg.maxWaitSeconds = next.maxWaitSeconds;
  cfg.hosts = next.hosts;
  cfg.locks = next.locks;
  cfg.maxLocks = next.maxLocks;
  cfg.maxStreams = next.maxStreams;
  cfg.declared = next.declared;
  return { changed, needRestart };
}

/** A token in words, without its secret or its digest: "ana (release, block on prod, staging)". */
export const describeToken = (t: Token): string =>
  `${t.who} (${[...t.can].join(", ")} on ${t.locks === "*" ? "every lock" : t.locks.join(", ")})`;

/** A [[trust]] in words: "https://token.actions.githubusercontent.com for repository = acme/shop (release on prod)". */
export const describeTrust = (t: Trust): string =>
  `${t.issuer} for ${t.claims.map((c) => `${c.claim} = ${c.patterns.join(" or ")}`).join(", ")} (${[...t.can].join(", ")} on ${t.locks === "*" ? "every lock" : t.locks.join(", ")}; audience ${t.audience}${t.jwksFile ? `; keys from ${t.jwksFile}` : ""})`;

function* trustChanges(before: readonly Trust[], after: readonly Trust[]): Generator<string> {
  const words = (list: readonly Trust[]) => new Set(list.map(describeTrust));
  const [was, is] = [words(before), words(after)];
  for (const t of is) if (!was.has(t)) yield `trust added: ${t}`;
  for (const t of was) if (!is.has(t)) yield `trust removed: ${t}`;
}

function* tokenChanges(before: Access, after: Access): Generator<string> {
  for (const [digest, t] of after.tokens) {
    const was = before.tokens.get(digest);
    if (!was) yield `token added: ${describeToken(t)}`;
    else if (describeToken(was) !== describeToken(t))
      yield `token changed: ${describeToken(was)} → ${describeToken(t)}`;
  }
  for (const [digest, t] of before.tokens) if (!after.tokens.has(digest)) yield `token removed: ${describeToken(t)}`;
}
