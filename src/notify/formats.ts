// What a webhook is sent: the Standard Webhooks format (signed), a Slack
// incoming-webhook message, or a Teams Workflows message with an Adaptive Card.
// Pure functions of an event and its delivery id; deliver.ts sends them.
//
// Fields relied on:
// - Standard Webhooks (standardwebhooks.com): headers webhook-id, webhook-timestamp (Unix seconds) and
//   webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>", the key being the base64 after
//   "whsec_"; body {type, timestamp, data}.
// - Slack incoming webhooks: `text` (shown in notifications, and alone where blocks are not) with
//   `mrkdwn: false`, and `blocks` with a "section" and a "context" of plain_text; &, < and > escaped as
//   Slack asks. Names and reasons come from whoever may start: they are never read as formatting.
// - Teams Workflows ("Post to a channel when a webhook request is received"): {type: "message",
//   attachments: [{contentType: "application/vnd.microsoft.card.adaptive", content: AdaptiveCard}]},
//   the card version 1.4 with RichTextBlocks of TextRuns, which (unlike TextBlock and FactSet) are not
//   read as markdown: a name like "[click](https://evil.example)" shows as written.
import pkg from "../../package.json" with { type: "json" };
import { type Event, statusAfter } from "../release.ts";
import { runOf } from "../trust.ts";
import { describeTold, iso, type Told } from "../words.ts";
import { type EventName, type Format, paceWords, type Webhook } from "./webhook.ts";

/** The Standard Webhooks type of each event kind. */
const TYPES: Record<EventName, string> = {
  started: "release.started",
  stopped: "release.stopped",
  expired: "release.expired",
  abandoned: "release.abandoned",
  renewed: "release.renewed",
  "long-running": "release.long-running",
  overridden: "release.overridden",
  blocked: "lock.blocked",
  unblocked: "lock.unblocked",
  frozen: "lock.frozen",
  thawed: "lock.thawed",
  waiting: "queue.waiting",
  "left-queue": "queue.left",
  superseded: "queue.superseded",
};

export type Message = { headers: Record<string, string>; body: string };

/** A delivery id, the same on every retry: the event's place in the store and its time. */
export const messageId = (seq: number, e: Event): string => `msg_${seq}_${e.at}`;

/** Whether the webhook wants this event: its kind, and a lock it hears of; a reminder only at its own pace. */
export function wants(h: Webhook, e: Event, hearsLock: (lock: string) => boolean): boolean {
  // A release of several locks is heard of on any of them.
  if (!h.events.has(e.kind as EventName) || !(e.locks ?? [e.lock]).some(hearsLock)) return false;
  return (
    e.kind !== "long-running" ||
    (h.remindAfterMs !== null && e.reason.endsWith(`(every ${paceWords(h.remindAfterMs)})`))
  );
}

/**
 * The body and headers for one event, in the webhook's format; `now` is the send time (for the signature),
 * `told` what was looked up for the event when it is sent (how long a release ran, until when a freeze lasts).
 */
export function render(h: Webhook, id: string, e: Event | "ping", now: number, told: Told = {}): Message {
  const text = e === "ping" ? "releasestatus: a test message; this webhook works" : line(e, told);
  if (h.format === "slack") return { headers: JSON_HEADERS, body: JSON.stringify(slack(text, e)) };
  if (h.format === "teams") return { headers: JSON_HEADERS, body: JSON.stringify(teams(text, e)) };
  return standard(h, id, e, now, text);
}

// Our own name, not the runtime's (Bun/1.4.4): a receiver's log and firewall can tell what calls it.
const JSON_HEADERS = { "Content-Type": "application/json", "User-Agent": `releasestatus/${pkg.version}` };

// The lock an event is on, or every lock of its release: "prod/eu, shared-db".
const lockNames = (e: Event): string => (e.locks ?? [e.lock]).join(", ");

// One readable line, like the log's, naming the lock.
const line = (e: Event, told: Told) => {
  const words = describeTold(e, told);
  return e.lock === "" || words.includes(` ${e.lock}`) ? words : `${words} (on ${e.lock})`;
};

function standard(h: Webhook, id: string, e: Event | "ping", now: number, text: string): Message {
  const body = JSON.stringify(
    e === "ping"
      ? { type: "ping", timestamp: iso(now), data: { message: "a test message from releasestatus webhook-test" } }
      : {
          type: TYPES[e.kind as EventName] ?? `release.${e.kind}`,
          timestamp: iso(e.at),
          data: {
            lock: e.lock,
            ...(e.locks ? { locks: e.locks } : {}), // every lock of a release that holds several
            releaseId: e.releaseId,
            name: e.name,
            by: e.by ?? null,
            ...(runOf(e.by) ? { run: runOf(e.by) } : {}),
            reason: e.reason,
            at: iso(e.at),
            status: e.status ?? statusAfter(e.kind, { blocked: false, frozen: false }), // stored since it was known
            message: text,
          },
        },
  );
  const timestamp = String(Math.floor(now / 1000));
  const headers: Record<string, string> = { ...JSON_HEADERS, "webhook-id": id, "webhook-timestamp": timestamp };
  if (h.secret) headers["webhook-signature"] = sign(h.secret, id, timestamp, body);
  return { headers, body };
}

/** The Standard Webhooks signature: "v1," and the base64 HMAC-SHA256 of "id.timestamp.body". */
export const sign = (key: Uint8Array, id: string, timestamp: string, body: string): string =>
  `v1,${new Bun.CryptoHasher("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`;

const slackEscape = (s: string) => s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");

function slack(text: string, e: Event | "ping") {
  const context =
    e === "ping"
      ? "releasestatus webhook-test"
      : [
          e.lock ? `${e.locks ? "locks" : "lock"} ${lockNames(e)}` : "every lock",
          e.releaseId ? `release #${e.releaseId}` : "",
          iso(e.at),
        ]
          .filter(Boolean)
          .join(" · ");
  return {
    text: slackEscape(text),
    mrkdwn: false,
    blocks: [
      { type: "section", text: { type: "plain_text", text: slackEscape(text), emoji: false } },
      { type: "context", elements: [{ type: "plain_text", text: slackEscape(context), emoji: false }] },
    ],
  };
}

function teams(text: string, e: Event | "ping") {
  const facts =
    e === "ping"
      ? []
      : [
          { title: e.locks ? "Locks" : "Lock", value: e.lock ? lockNames(e) : "every lock" },
          ...(e.releaseId ? [{ title: "Release", value: `#${e.releaseId}` }] : []),
          ...(e.name ? [{ title: "Name", value: e.name }] : []),
          ...(e.by ? [{ title: "By", value: e.by }] : []),
          ...(e.reason ? [{ title: "Reason", value: e.reason }] : []),
          { title: "At", value: iso(e.at) },
        ];
  return {
    type: "message",
    attachments: [
      {
        contentType: "application/vnd.microsoft.card.adaptive",
        contentUrl: null,
        content: {
          $schema: "http://adaptivecards.io/schemas/adaptive-card.json",
          type: "AdaptiveCard",
          version: "1.4",
          body: [
            { type: "RichTextBlock", inlines: [{ type: "TextRun", text, weight: "Bolder" }] },
            ...facts.map((f) => ({
              type: "RichTextBlock",
              inlines: [
                { type: "TextRun", text: `${f.title}: `, weight: "Bolder" },
                { type: "TextRun", text: f.value },
              ],
            })),
          ],
        },
      },
    ],
  };
}

export type { Format };
