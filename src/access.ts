// Who may do what, on which locks. A token is known by its SHA-256 (the
// configuration file holds only that); it has a holder (`who`), rights, and a
// scope of locks. RS_TOKEN is one more token that may do everything. A CI job's
// ID token (see src/trust.ts) becomes a token too, holding what each [[trust]] it matches grants.
import { validLockName } from "./names.ts";
import { isAncestor, ROOT } from "./release.ts";
import type { Trust } from "./trust.ts";
import { PLAIN_TOKEN } from "./words.ts";

/**
 * release: start, stop, renew · block: block, unblock · override: start during a freeze (or older than the
 * last release on a newest-first lock) · urgent: wait ahead of every non-urgent waiter.
 */
export type Right = "release" | "block" | "override" | "urgent";
export const RIGHTS: readonly Right[] = ["release", "block", "override", "urgent"];

export type Token = {
  who: string; // recorded as `by` on everything the token does
  can: ReadonlySet<Right>;
  locks: readonly string[] | "*"; // each a lock and everything under it; "*": every lock and the root
  sha256: string; // hex, lower case
  named: boolean; // false for RS_TOKEN, whose requests keep the name they send (or none)
  grants?: readonly Grant[]; // a CI job's: each matching [[trust]]'s rights on its locks (can and locks are their union)
};
/** Rights on a scope of locks. */
export type Grant = Pick<Token, "can" | "locks">;

/** Tokens by the hex SHA-256 of the token, and whether reading needs one too. */
export type Access = { tokens: ReadonlyMap<string, Token>; read: "open" | "token"; trust: readonly Trust[] };

/** Whether changes need a token: a named one, RS_TOKEN, or a CI job's ID token that a [[trust]] accepts. */
export const closed = (a: Access): boolean => a.tokens.size > 0 || a.trust.length > 0;

/** `can` as the configuration file writes it: a non-empty list of rights; null when it is not. */
export const parseRights = (can: unknown): Set<Right> | null =>
  Array.isArray(can) && can.length > 0 && can.every((c) => RIGHTS.includes(c as Right))
    ? new Set(can as Right[])
    : null;

/** `locks` as the configuration file writes it: ["*"], or lock names; null when it is neither. */
export function parseScope(locks: unknown): Token["locks"] | null {
  if (Array.isArray(locks) && locks.length === 1 && locks[0] === "*") return "*";
  if (Array.isArray(locks) && locks.length > 0 && locks.every((l) => typeof l === "string" && validLockName(l)))
    return locks as string[];
  return null;
}

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
export const reaches = (t: Grant, lock: string): boolean =>
  t.locks === "*" || (lock !== ROOT && t.locks.some((l) => l === lock || isAncestor(l, lock)));

/** What each action needs, and how to say it: "ana may not block prod/eu". */
export const ACTIONS = {
  start: { right: "release", words: "start a release on" },
  stop: { right: "release", words: "stop the release on" },
  renew: { right: "release", words: "renew the release on" },
  block: { right: "block", words: "block" },
  unblock: { right: "block", words: "unblock" },
  override: { right: "override", words: "override the freeze on" },
  urgent: { right: "urgent", words: "wait in the urgent lane on" },
} as const satisfies Record<string, { right: Right; words: string }>;
export type Action = keyof typeof ACTIONS;

/** Why the token may not do this, in words; null when it may. */
export function forbidden(t: Token, action: Action, lock: string): string | null {
  const { right, words } = ACTIONS[action];
  // A right counts only on the scope it was granted with: the union of grants, never of rights and scopes apart.
  const grants = t.grants ?? [t];
  if (grants.some((g) => g.can.has(right) && reaches(g, lock))) return null;
  const where = lock === ROOT ? 'every lock (the root needs a token with locks = ["*"])' : lock;
  const has = grants.map((g) => (g.can.size === 0 ? "no rights" : `${[...g.can].join(", ")} on ${scopeWords(g)}`));
  return `${t.who} may not ${words} ${where}: the token has ${has.join("; ")}`;
}

const scopeWords = (t: Grant) => (t.locks === "*" ? "every lock" : t.locks.join(", "));
