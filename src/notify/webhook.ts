// A [[webhook]] of the configuration file: where to send which events, in
// which format. Read and checked here; what is sent is formats.ts, and how it
// is delivered is deliver.ts.

import { LOCK_NAME_RULE, validLockName } from "../names.ts";
import { isAncestor } from "../release.ts";
import { readSecretFile } from "../terminal.ts";
import { unreadable } from "../visible.ts";

export type Format = "standard" | "slack" | "teams";

/** What a webhook can be told of, by the names the file uses. */
export const EVENT_NAMES = [
  "started",
  "stopped",
  "expired",
  "abandoned",
  "renewed",
  "long-running",
  "overridden",
  "blocked",
  "unblocked",
  "frozen",
  "thawed",
  "waiting",
  "left-queue",
  "superseded",
] as const;
export type EventName = (typeof EVENT_NAMES)[number];
const DEFAULT_EVENTS = EVENT_NAMES.filter((e) => e !== "renewed" && e !== "waiting");

export type Webhook = {
  key: string; // its identity in the store (its progress): the format and the URL
  label: string; // its host, and a number when two share one: never the path, which may be a secret
  url: string;
  format: Format;
  locks: string[] | null; // null: every lock and the root
  events: ReadonlySet<EventName>;
  remindAfterMs: number | null; // long-running reminders: after this long, and again each time as long again
  remindLabel: string | null; // as the file says it: "2h"
  secret: Uint8Array | null; // standard format: the HMAC key (whsec_ decoded)
};

const KEYS = ["url", "url_file", "format", "locks", "events", "remind_after", "secret", "secret_file"];

/** Reads one [[webhook]] table; a string is the problem, naming its key first. */
export function parseWebhook(raw: Record<string, unknown>): Omit<Webhook, "label"> | string {
  for (const key of Object.keys(raw))
    if (!KEYS.includes(key)) return `${key} is not a webhook setting: expected ${KEYS.join(", ")}`;
  const url = secretOrFile(raw, "url", "url_file");
  if (typeof url !== "string" || url.startsWith("!"))
    return url === null ? "url is missing: give url or url_file" : url.slice(1);
  // Control and invisible characters (a direction override) would make the URL read as another in logs.
  if (!/^https?:\/\//i.test(url) || !URL.canParse(url) || unreadable(url))
    return `url is not valid: expected an http:// or https:// URL (the value is not shown: it may hold a secret)`;
  const format = raw.format ?? "standard";
  if (format !== "standard" && format !== "slack" && format !== "teams")
    return `format = ${JSON.stringify(format)} is not valid: expected "standard" (the default), "slack" or "teams"`;
  let locks: string[] | null = null;
  if (raw.locks !== undefined && !(Array.isArray(raw.locks) && raw.locks.length === 1 && raw.locks[0] === "*")) {
    if (
      !Array.isArray(raw.locks) ||
      raw.locks.length === 0 ||
      !raw.locks.every((l) => typeof l === "string" && validLockName(l))
    )
      return `locks is not valid: expected ["*"] (the default) or a list of lock names (${LOCK_NAME_RULE})`;
    locks = raw.locks as string[];
  }
  let events: ReadonlySet<EventName> = new Set(DEFAULT_EVENTS);
  if (raw.events !== undefined) {
    if (
      !Array.isArray(raw.events) ||
      raw.events.length === 0 ||
      !raw.events.every((e) => EVENT_NAMES.includes(e as EventName))
    )
      return `events is not valid: expected a non-empty list of ${EVENT_NAMES.map((e) => `"${e}"`).join(", ")}`;
    events = new Set(raw.events as EventName[]);
  }
  let remindAfterMs: number | null = null;
  if (raw.remind_after !== undefined) {
    remindAfterMs = typeof raw.remind_after === "string" ? durationMs(raw.remind_after) : null;
    if (remindAfterMs === null || remindAfterMs < 60_000 || remindAfterMs > 30 * 86_400_000)
      return `remind_after = ${JSON.stringify(raw.remind_after)} is not valid: expected a duration from a minute to 30 days, such as "30m", "2h" or "1d"`;
    if (!events.has("long-running"))
      return 'remind_after needs "long-running" in events: reminders are long-running events';
  }
  const secretText = secretOrFile(raw, "secret", "secret_file");
  if (typeof secretText === "string" && secretText.startsWith("!")) return secretText.slice(1);
  let secret: Uint8Array | null = null;
  if (secretText !== null) {
    if (format !== "standard") return `secret is for the standard format only: ${format} webhooks are not signed`;
    secret = whsec(secretText);
    if (!secret)
      return 'secret is not valid: expected "whsec_" and the base64 of 24 to 64 random bytes (e.g. "whsec_" + `openssl rand -base64 32`)';
  }
  const key = Bun.SHA256.hash(`${format} ${url}`, "hex") as string;
  const remindLabel = typeof raw.remind_after === "string" ? raw.remind_after : null;
  return { key, url, format, locks, events, remindAfterMs, remindLabel, secret };
}

// A value given inline or in a file (a container secret); "!problem" when neither works.
function secretOrFile(raw: Record<string, unknown>, key: string, fileKey: string): string | null {
  if (raw[key] !== undefined && raw[fileKey] !== undefined) return `!${key} and ${fileKey} are both given: keep one`;
  if (raw[fileKey] !== undefined) {
    if (typeof raw[fileKey] !== "string") return `!${fileKey} must be a path in quotes`;
    const read = readSecretFile(raw[fileKey] as string);
    if (!read.ok) return `!${fileKey}: cannot read ${raw[fileKey]} (${read.code})`;
    return read.secret;
  }
  if (raw[key] === undefined) return null;
  if (typeof raw[key] !== "string" || raw[key] === "") return `!${key} must be a non-empty string in quotes`;
  return raw[key] as string;
}

function whsec(text: string): Uint8Array | null {
  if (!text.startsWith("whsec_")) return null;
  const b64 = text.slice(6);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return null;
  const bytes = Buffer.from(b64, "base64");
  return bytes.length >= 24 && bytes.length <= 64 ? new Uint8Array(bytes) : null;
}

/** "90s", "30m", "2h", "1d" (or combined: "1h30m") in milliseconds; null when not a duration. */
export function durationMs(text: string): number | null {
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim());
  if (!m || text.trim() === "") return null;
  const [d, h, min, s] = m.slice(1).map((x) => Number(x ?? 0)) as [number, number, number, number];
  return (((d * 24 + h) * 60 + min) * 60 + s) * 1000;
}

/** Labels by host, numbered where two webhooks share one: what logs, /webhooks and metrics call them. */
export function labelled(hooks: Omit<Webhook, "label">[]): Webhook[] {
  const seen = new Map<string, number>();
  return hooks.map((h) => {
    const host = new URL(h.url).host;
    const n = (seen.get(host) ?? 0) + 1;
    seen.set(host, n);
    return { ...h, label: n === 1 ? host : `${host}#${n}` };
  });
}

/** Whether the webhook hears of an event on `lock`: a listed lock and everything under it; the root only with every lock. */
export const hearsLock = (h: Pick<Webhook, "locks">, lock: string): boolean =>
  h.locks === null || h.locks.some((l) => l === lock || isAncestor(l, lock));

/** A reminder pace in words, the same however the file wrote it ("120m" and "2h" are "2 h"). */
export function paceWords(ms: number): string {
  const m = Math.round(ms / 60_000);
  return m % 60 === 0 ? `${m / 60} h` : m > 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m} min`;
}
