// The order of release versions, for a lock whose line keeps only the newest (queue = "newest"). A version is
// what a deploy script calls its build: `v2.4.1`, `2.0.0-rc1`, or a CI pipeline number such as `4812`. Pure.
//
// A dotted number (a leading `v` ignored) compares part by part as numbers, so `1.10` is after `1.9` and `v2`
// is `2` (missing parts count as 0: `2` is `2.0.0`). A pre-release (`-rc1`, after the numbers) comes before
// its release. Anything else compares as text, after every dotted number: a name is never mistaken for a number.

/** Longest version accepted on a start, in characters. */
export const MAX_VERSION = 64;

/** What a version may be made of: letters, digits and `.`, `-`, `_`, `+`. */
export const VERSION_RULE = `up to ${MAX_VERSION} letters, digits, '.', '-', '_' or '+', e.g. v2.4.1, 2.0.0-rc1 or a pipeline number`;

const ALLOWED = /^[A-Za-z0-9._+-]+$/;
const DOTTED = /^[vV]?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?$/;

/** Whether `version` may be sent on a start (see VERSION_RULE). */
export const validVersion = (version: string): boolean => version.length <= MAX_VERSION && ALLOWED.test(version);

type Parsed = { numbers: bigint[]; pre: string | null } | { text: string };

const parse = (version: string): Parsed => {
  const m = DOTTED.exec(version);
  if (!m) return { text: version };
  return { numbers: (m[1] as string).split(".").map((n) => BigInt(n)), pre: m[2] ?? null };
};

const sign = (a: bigint | number, b: bigint | number): number => (a < b ? -1 : a > b ? 1 : 0);

const compareNumbers = (a: bigint[], b: bigint[]): number => {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const by = sign(a[i] ?? 0n, b[i] ?? 0n);
    if (by !== 0) return by;
  }
  return 0;
};

// Pre-releases compare by runs of digits as numbers and the rest as text: rc2 before rc10, alpha before beta.
const RUNS = /\d+|\D+/g;
const comparePre = (a: string, b: string): number => {
  const x = a.match(RUNS) ?? [];
  const y = b.match(RUNS) ?? [];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const p = x[i];
    const q = y[i];
    if (p === undefined || q === undefined) return p === undefined ? -1 : 1;
    const numeric = /^\d/.test(p) && /^\d/.test(q);
    const by = numeric ? sign(BigInt(p), BigInt(q)) : sign(p < q ? -1 : p > q ? 1 : 0, 0);
    if (by !== 0) return by;
  }
  return 0;
};

/** Negative when `a` comes before `b`, positive after, 0 when they are the same version (`v2` and `2`). */
export function compareVersions(a: string, b: string): number {
  const x = parse(a);
  const y = parse(b);
  if ("text" in x || "text" in y) {
    if (!("text" in x)) return -1; // every dotted number comes before any text
    if (!("text" in y)) return 1;
    return sign(x.text < y.text ? -1 : x.text > y.text ? 1 : 0, 0);
  }
  const byNumbers = compareNumbers(x.numbers, y.numbers);
  if (byNumbers !== 0) return byNumbers;
  if (x.pre === null || y.pre === null) return sign(x.pre === null ? 1 : 0, y.pre === null ? 1 : 0);
  return comparePre(x.pre, y.pre);
}
