// `make dist`: a release binary per platform, each of the right format and
// architecture, with checksums. Runs in `make test-dist` (needs `file`).
import { describe, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";

const DIST = join(import.meta.dir, "..", "dist");
const EXPECTED: Record<string, RegExp> = {
  "releasestatus-linux-x64": /ELF 64-bit LSB executable, x86-64/,
  "releasestatus-linux-arm64": /ELF 64-bit LSB executable, ARM aarch64/,
  "releasestatus-darwin-x64": /Mach-O 64-bit x86_64 executable/,
  "releasestatus-darwin-arm64": /Mach-O 64-bit arm64 executable/,
  "releasestatus-windows-x64.exe": /PE32\+ executable \(console\) x86-64, for MS Windows/,
};
const sh = (cmd: string[]) => {
  const r = Bun.spawnSync(cmd, { cwd: DIST, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
};

describe("make dist", () => {
  for (const [name, format] of Object.entries(EXPECTED))
    test(`${name} is an executable of the right format and architecture`, () => {
      expect(sh(["file", "-b", name]).out).toMatch(format);
      console.log(`${name}: ${(statSync(join(DIST, name)).size / 1e6).toFixed(1)} MB`);
    });

  test("the linux x64 binary runs", () => {
    const version = sh(["./releasestatus-linux-x64", "--version"]);
    expect(version.out).toMatch(/^releasestatus \d+\.\d+\.\d+\n$/);
    expect(sh(["./releasestatus-linux-x64"]).err).toContain("RS_PORT is not set");
  });

  test("SHA256SUMS lists every binary and matches it", () => {
    const sums = sh(["sha256sum", "-c", "SHA256SUMS"]);
    expect(sums.code).toBe(0);
    expect(sums.out.trim().split("\n").sort()).toEqual(
      Object.keys(EXPECTED)
        .map((n) => `${n}: OK`)
        .sort(),
    );
  });
});
