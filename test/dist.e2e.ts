// `make dist`: a release archive per platform (.tar.gz, .zip for Windows), each holding one folder with
// the binary, README.md, LICENSE and docs/ (the pages the README links to); the binary of the right format and architecture; SHA256SUMS over
// the archives. Runs in `make test-dist` (needs `file` and `unzip`).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };

const ROOT = join(import.meta.dir, "..");
const DIST = join(ROOT, "dist");
const FORMATS: Record<string, RegExp> = {
  "linux-x64": /ELF 64-bit LSB executable, x86-64/,
  "linux-arm64": /ELF 64-bit LSB executable, ARM aarch64/,
  "darwin-x64": /Mach-O 64-bit x86_64 executable/,
  "darwin-arm64": /Mach-O 64-bit arm64 executable/,
  "windows-x64": /PE32\+ executable \(console\) x86-64, for MS Windows/,
};
const folder = (platform: string) => `releasestatus-${pkg.version}-${platform}`;
const archive = (platform: string) => `${folder(platform)}.${platform.startsWith("windows") ? "zip" : "tar.gz"}`;
const binary = (platform: string) => (platform.startsWith("windows") ? "releasestatus.exe" : "releasestatus");

const sh = (cmd: string[], cwd = DIST) => {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
};
const lines = (text: string) => text.trim().split("\n").sort();
// The README links to these: a downloader reads them beside it.
const DOCS = readdirSync(join(ROOT, "docs")).map((file) => `docs/${file}`);

const work = mkdtempSync(join(tmpdir(), "releasestatus-dist-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Unpacks one archive into a folder of its own under `work`; answers the folder it holds. */
const unpack = (platform: string) => {
  const into = join(work, platform);
  const name = join(DIST, archive(platform));
  const r = platform.startsWith("windows")
    ? sh(["unzip", "-q", name, "-d", into])
    : sh(["sh", "-c", 'mkdir -p "$1" && tar -xzf "$2" -C "$1"', "sh", into, name]);
  expect(r.err).toBe("");
  expect(r.code).toBe(0);
  return join(into, folder(platform));
};

describe("make dist", () => {
  test("dist/ holds exactly the archives and SHA256SUMS", () => {
    expect(readdirSync(DIST).sort()).toEqual([...Object.keys(FORMATS).map(archive), "SHA256SUMS"].sort());
  });

  for (const [platform, format] of Object.entries(FORMATS))
    test(`${archive(platform)} holds one folder with the binary, README.md, LICENSE and docs/`, () => {
      const name = archive(platform);
      const list = platform.startsWith("windows") ? sh(["unzip", "-Z1", name]) : sh(["tar", "-tzf", name]);
      expect(list.code).toBe(0);
      const top = `${folder(platform)}/`;
      const files = ["LICENSE", "README.md", "docs/", ...DOCS, binary(platform)];
      expect(lines(list.out)).toEqual([top, ...files.map((file) => `${top}${file}`)].sort());

      const unpacked = unpack(platform);
      expect(sh(["file", "-b", binary(platform)], unpacked).out).toMatch(format);
      for (const doc of ["README.md", "LICENSE", ...DOCS])
        expect(readFileSync(join(unpacked, doc), "utf8")).toBe(readFileSync(join(ROOT, doc), "utf8"));
      const size = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
      console.log(
        `${name}: ${size(statSync(join(DIST, name)).size)} (binary ${size(statSync(join(unpacked, binary(platform))).size)})`,
      );
    });

  test("the linux x64 binary from its archive runs", () => {
    const unpacked = unpack("linux-x64");
    const version = sh(["./releasestatus", "--version"], unpacked);
    expect(version.out).toBe(`releasestatus ${pkg.version}\n`);
    expect(sh(["./releasestatus"], unpacked).err).toContain("RS_PORT is not set");
  });

  test("SHA256SUMS lists every archive and matches it", () => {
    const sums = sh(["sha256sum", "-c", "SHA256SUMS"]);
    expect(sums.code).toBe(0);
    expect(lines(sums.out)).toEqual(
      Object.keys(FORMATS)
        .map((p) => `${archive(p)}: OK`)
        .sort(),
    );
  });
});
