// Who may do what, on which locks. A token is known by its SHA-256 (the
// configuration file holds only that); it has a holder (`who`), rights, and a
// scope of locks. RS_TOKEN is one more token that may do everything.
import { isAncestor, ROOT } from "./release.ts";
import { PLAIN_TOKEN } from "./words.ts";

/** release: start, stop, renew · block: block, unblock · override: start during a freeze. */
export type Right = "release" | "block" | "override";
export const RIGHTS: readonly Right[] = ["release", "block", "override"];

export type Token = {
  who: string; // recorded as `by` on everything the token does
  can: ReadonlySet<Right>;
  locks: readonly string[] | "*"; // each a lock and everything under it; "*": every lock and the root
  sha256: string; // hex, lower case
  named: boolean; // false for RS_TOKEN, whose requests keep the name they send (or none)
};

/** Tokens by the hex SHA-256 of the token, and whether reading needs one too. */
export type Access = { tokens: ReadonlyMap<string, Token>; read: "open" | "token" };

/** RS_TOKEN: may do everything, and is recorded as `token`. */
export const everything = (sha256: string): Token => ({
  who: PLAIN_TOKEN,
  can: new Set(RIGHTS),
  locks: "*",
  sha256,
  named: false,
});

/** The hex SHA-256 of a token, as the configuration file holds it. */
export const digestOf = (token: string): string => Bun.SHA256.hash(token, "hex") as string;

/**
 * The token a request's bearer string stands for; null when none matches. The map is keyed by the
 * token's digest, so the secret itself is never compared: what a lookup's timing could tell is at
 * most something about a SHA-256, which says nothing about a token that has one. The final check
 * is constant-time all the same.
 */
export function identify(access: Access, bearer: string): Token | null {
  if (bearer === "") return null;
  const digest = digestOf(bearer);
  const token = access.tokens.get(digest);
  return token && sameText(token.sha256, digest) ? token : null;
}

// Compares two strings of equal length in time that does not depend on where they differ.
function sameText(a: string, b: string): boolean {
  let difference = a.length ^ b.length;
  for (let i = 0; i < a.length; i++) difference |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return difference === 0;
}

/** Whether the token's scope takes in `lock`: the root only with "*". */
export const reaches = (t: Token, lock: string): boolean =>
  t.locks === "*" || (lock !== ROOT && t.locks.some((l) => l === lock || isAncestor(l, lock)));

/** What each action needs, and how to say it: "ana may not block prod/eu". */
export const ACTIONS = {
  start: { right: "release", words: "start a release on" },
  stop: { right: "release", words: "stop the release on" },
  renew: { right: "release", words: "renew the release on" },
  block: { right: "block", words: "block" },
  unblock: { right: "block", words: "unblock" },
  override: { right: "override", words: "override the freeze on" },
} as const satisfies Record<string, { right: Right; words: string }>;
export type Action = keyof typeof ACTIONS;

/** Why the token may not do this, in words; null when it may. */
export function forbidden(t: Token, action: Action, lock: string): string | null {
  const { right, words } = ACTIONS[action];
  if (t.can.has(right) && reaches(t, lock)) return null;
  const where = lock === ROOT ? 'every lock (the root needs a token with locks = ["*"])' : lock;
  const has = t.can.size === 0 ? "no rights" : `${[...t.can].join(", ")} on ${scopeWords(t)}`;
  return `${t.who} may not ${words} ${where}: the token has ${has}`;
}

const scopeWords = (t: Token) => (t.locks === "*" ? "every lock" : t.locks.join(", "));
