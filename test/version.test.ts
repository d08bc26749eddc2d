// The order of release versions (src/version.ts): a table of pairs, each read "a is before / the same as / after b".
import { describe, expect, test } from "bun:test";
import { compareVersions, validVersion } from "../src/version.ts";

const ORDER: [string, "<" | "=" | ">", string][] = [
  ["1.9", "<", "1.10"],
  ["v2", "=", "2"],
  ["V2.0", "=", "v2"],
  ["2", "=", "2.0.0"],
  ["2.0.0-rc1", "<", "2.0.0"],
  ["2.0.0-rc2", "<", "2.0.0-rc10"],
  ["2.0.0-alpha", "<", "2.0.0-beta"],
  ["1.9.9", "<", "2.0.0-rc1"],
  ["4812", "<", "4813"],
  ["999", "<", "1000"],
  ["v2.4.0", "<", "v2.4.1"],
  ["99999999999999999999", "<", "100000000000000000000"],
  ["9999", "<", "main-abc"],
  ["main-abc", "<", "main-abd"],
  ["release_7", ">", "7"],
];

describe("versions compare as dotted numbers, text after every number", () => {
  for (const [a, op, b] of ORDER)
    test(`${a} ${op} ${b}`, () => {
      // Signs only, and never -0: the order is all that counts.
      const order = (x: string, y: string) => ["<", "=", ">"][Math.sign(compareVersions(x, y)) + 1];
      expect(order(a, b)).toBe(op);
      expect(order(b, a)).toBe(op === "<" ? ">" : op === ">" ? "<" : "=");
    });
});

describe("a version is a short word of letters, digits and . - _ +", () => {
  test("accepted", () => {
    for (const v of ["v2.4.1", "2.0.0-rc1", "4812", "main_abc+1"]) expect(validVersion(v)).toBe(true);
  });
  test("refused: empty, spaces, slashes, too long", () => {
    for (const v of ["", "1 2", "a/b", "x".repeat(65), "é"]) expect(validVersion(v)).toBe(false);
  });
});
