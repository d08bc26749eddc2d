// Claims: what one start asks for. A claim names one or more locks, each exactly (`prod/eu`) or as a
// pool (`devices/*`: any one declared child of `devices`). It is granted whole or not at all, and waits
// in line as one waiter. Pure functions: which names a claim may hold, whether two claims overlap, and
// whether a claim is well formed.
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { overlaps } from "./release.ts";

/** A claim names at most this many locks. */
export const MAX_CLAIM_LOCKS = 16;

const POOL = "/*";

/** Whether a name asks for any one declared child of a lock: `devices/*`. */
export const isPool = (name: string): boolean => name.endsWith(POOL);

/** The lock whose children a pool takes from: `devices` for `devices/*`. */
export const poolParent = (pool: string): string => pool.slice(0, -POOL.length);

/** The declared children of a lock, by name (the configuration's [[lock]] tables). */
export type Children = (parent: string) => string[];

/** The locks a claim may end up holding: its exact locks, and every declared child of its pools. */
export const reach = (claim: readonly string[], children: Children): string[] =>
  claim.flatMap((name) => (isPool(name) ? children(poolParent(name)) : [name]));

/**
 * Whether two claims overlap, each given by its reach: one of them may hold a lock that equals, or is an
 * ancestor or a descendant of, a lock the other may hold. A waiting claim is never passed by one it overlaps.
 */
export const claimsOverlap = (a: readonly string[], b: readonly string[]): boolean =>
  a.some((x) => b.some((y) => overlaps(x, y)));

/**
 * What is wrong with a claim, in words that say what to send instead; null when it is well formed: at most
 * MAX_CLAIM_LOCKS valid names, pools with declared children, no two of its locks overlapping.
 */
export function claimProblem(claim: readonly string[], children: Children): string | null {
  if (claim.length > MAX_CLAIM_LOCKS)
    return `a claim names ${claim.length} locks, more than ${MAX_CLAIM_LOCKS}: ask for at most ${MAX_CLAIM_LOCKS} in one start`;
  for (const name of claim) {
    const lock = isPool(name) ? poolParent(name) : name;
    if (!validLockName(lock)) return `lock=${name.slice(0, 120)} is not a lock name: use ${LOCK_NAME_RULE}`;
    if (isPool(name) && children(lock).length === 0)
      return `${name} is a pool of ${lock}, which has no declared children: declare them as [[lock]] tables named ${lock}/NAME in the configuration file, or name a lock`;
  }
  for (let i = 0; i < claim.length; i++)
    for (let j = i + 1; j < claim.length; j++) {
      const a = claim[i] as string;
      const b = claim[j] as string;
      if (claimsOverlap(reach([a], children), reach([b], children)))
        return `the locks ${a} and ${b} overlap (${a === b ? "the same lock twice" : "one is inside the other"}): a claim holds each lock once; drop one of them`;
    }
  return null;
}
