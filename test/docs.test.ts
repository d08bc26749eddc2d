// The commands and configuration shown in docs/*.md, checked against the compiled binary as test/readme.test.ts
// checks the README's: every ```toml block passes `releasestatus check-config`, every ```yaml block parses, and every
// ```sh block is run, a section at a time, answering what its comments claim. A block that cannot run here says so in
// the markdown, on the line before it: `<!-- not run: REASON -->`. Any other block fails the first test below.
import { describe, expect, test } from "bun:test";
import { chmodSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { BINARY, type Daemon, daemonsPerTest, runToEnd, tempDir, until } from "./daemon.ts";

const ROOT = resolve(import.meta.dir, "..");
const daemon = daemonsPerTest();

/** A fenced block: where it is, its language, its text, the `##`/`###` section it is in, and why it is not run. */
type Block = { where: string; lang: string; text: string; section: string; notRun: string | null };

const NOT_RUN = /^<!-- not run: (.+) -->$/;

function blocksOf(file: string): Block[] {
  const blocks: Block[] = [];
  const lines = readFileSync(join(ROOT, file), "utf8").split("\n");
  let section = "";
  let before = ""; // the last line that is not empty, outside blocks
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    // A fence may be indented, inside a list item: its lines are read without that indentation.
    const fence = /^(\s*)```(.*)$/.exec(line);
    if (fence) {
      const indent = fence[1]?.length ?? 0;
      const end = lines.findIndex((l, j) => j > i && l.trimStart().startsWith("```"));
      const notRun = NOT_RUN.exec(before.trim())?.[1] ?? null;
      blocks.push({
        where: `${file}:${i + 1}`,
        lang: fence[2] ?? "",
        text: lines
          .slice(i + 1, end)
          .map((l) => l.slice(indent))
          .join("\n"),
        section,
        notRun,
      });
      i = end;
      before = "";
    } else if (line.trim() !== "") {
      if (/^#{2,3} /.test(line)) section = `${file} § ${line.replace(/^#+ /, "")}`;
      before = line;
    }
  }
  return blocks;
}

const PAGES = readdirSync(join(ROOT, "docs"))
  .filter((f) => f.endsWith(".md"))
  .map((f) => `docs/${f}`);
const BLOCKS = PAGES.flatMap(blocksOf);
const run = BLOCKS.filter((b) => b.notRun === null);

/** A line of a ```sh block: the command, and what its comment (two spaces or more, then `# `) says. */
const commandOf = (line: string) => {
  const [, command = line, comment = ""] = /^(.*?)(?:\s{2,}#\s(.*))?$/.exec(line) ?? [];
  return { command: command.trim(), comment };
};
// What this suite runs: a curl of the daemon, a releasestatus command, the daemon started with settings.
const CURL = /^curl .*(localhost|host):8080/;
const CLIENT = /^releasestatus (token|check-config|run) /;
const DAEMON = /^(RS_[A-Z_]+=\S+ )+releasestatus$/;
const runnable = (line: string) => [CURL, CLIENT, DAEMON].some((kind) => kind.test(commandOf(line).command));
const shLines = (b: Block) => b.text.split("\n").filter((l) => l.trim() !== "");

describe("every block of docs/*.md is run or checked here, or marked in the markdown as not run, with why", () => {
  test("there are blocks to run, of each kind", () => {
    expect(new Set(run.map((b) => b.lang))).toEqual(new Set(["sh", "toml", "yaml", "json", "js"]));
  });

  test("each block not marked is TOML, YAML, JSON, JavaScript, or sh whose every line is a curl of the daemon or a releasestatus command", () => {
    const unknown = run.filter(
      (b) => !(["toml", "yaml", "json", "js"].includes(b.lang) || (b.lang === "sh" && shLines(b).every(runnable))),
    );
    expect(
      unknown.map((b) => `${b.where} (${b.lang || "no language"}): mark it <!-- not run: REASON --> or run it here`),
    ).toEqual([]);
  });

  for (const b of BLOCKS.filter((b) => b.notRun !== null)) test.skip(`${b.where}: ${b.notRun}`, () => {});
});

// The secrets and hashes a block shows as "…" or as paths of this machine, filled in so that the file can be read.
function fillIn(toml: string, dir: string): string {
  let n = 0;
  const file = (name: string, content: string) => {
    writeFileSync(join(dir, name), content);
    return join(dir, name);
  };
  return toml
    .replace(
      /^sha256 = "…"/gm,
      () => `sha256 = "${new Bun.CryptoHasher("sha256").update(`token-${n++}`).digest("hex")}"`,
    )
    .replace(
      /^url_file = "[^"]+"/gm,
      () => `url_file = "${file(`url-${n++}`, "https://hooks.slack.com/services/T0/B0/x")}"`,
    )
    .replace(
      /^secret_file = "[^"]+"/gm,
      () => `secret_file = "${file(`secret-${n++}`, `whsec_${btoa("s".repeat(32))}`)}"`,
    );
}

const checkConfig = (file: string) => runToEnd([BINARY, "check-config", file], tempDir());

describe("every TOML block of docs/*.md is a valid configuration file", () => {
  for (const b of run.filter((b) => b.lang === "toml"))
    test(`${b.where} (${b.section}) passes releasestatus check-config`, async () => {
      const dir = tempDir();
      writeFileSync(join(dir, "releasestatus.toml"), fillIn(b.text, dir));
      const checked = await checkConfig(join(dir, "releasestatus.toml"));
      expect({ code: checked.code, stderr: checked.stderr }).toEqual({ code: 0, stderr: "" });
    });
});

describe("every JSON block of docs/*.md parses", () => {
  for (const b of run.filter((b) => b.lang === "json"))
    test(`${b.where} (${b.section})`, () => {
      expect(JSON.parse(b.text)).toBeTruthy();
    });
});

// The JavaScript of docs/notifications.md is a receiver's check of a signed delivery: loaded as a module, it must
// accept a delivery signed as the daemon signs (test/webhooks.test.ts checks the daemon's signatures the same way),
// and refuse it once its body, its id or its time is changed.
describe("every JavaScript block of docs/*.md runs: the receiver's check of a signature", () => {
  for (const b of run.filter((b) => b.lang === "js"))
    test(`${b.where} (${b.section}) accepts a signed delivery and refuses a changed one`, async () => {
      const { createHmac, randomBytes } = await import("node:crypto");
      const file = join(tempDir(), "verify.mjs");
      writeFileSync(file, `${b.text}\nexport { verified };\n`);
      const { verified } = await import(file);
      const key = randomBytes(32);
      const secret = `whsec_${key.toString("base64")}`;
      const sign = (id: string, ts: string, body: string) =>
        `v1,${createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest("base64")}`;
      const ts = String(Math.floor(Date.now() / 1000));
      const body = '{"type":"release.started"}';
      const headers = { "webhook-id": "msg_1", "webhook-timestamp": ts, "webhook-signature": sign("msg_1", ts, body) };
      expect(verified(secret, headers, body)).toBe(true);
      expect(verified(secret, headers, body.replace("started", "stopped"))).toBe(false);
      expect(verified(secret, { ...headers, "webhook-id": "msg_2" }, body)).toBe(false);
      const v2 = headers["webhook-signature"].replace("v1,", "v2,"); // a scheme it does not know
      expect(verified(secret, { ...headers, "webhook-signature": v2 }, body)).toBe(false);
      const old = String(Number(ts) - 3600);
      expect(
        verified(secret, { ...headers, "webhook-timestamp": old, "webhook-signature": sign("msg_1", old, body) }, body),
      ).toBe(false);
    });
});

describe("every YAML block of docs/*.md parses", () => {
  for (const b of run.filter((b) => b.lang === "yaml"))
    test(`${b.where} (${b.section})`, () => {
      expect(Bun.YAML.parse(b.text)).toBeTruthy();
    });
});

/**
 * A section's ```sh blocks, run in order in a directory of their own. Its TOML blocks without "…" are the daemon's
 * configuration, and so is what its `releasestatus token` lines print (each token is in the environment as
 * NAME_TOKEN, NAME the last part of its `who`: ci-prod's is PROD_TOKEN). /etc/releasestatus.toml is that file. The
 * daemon is started by a line that starts it, else at the first curl; `localhost:8080` and `host:8080` are it.
 */
class Section {
  dir = tempDir();
  config = join(this.dir, "releasestatus.toml");
  env: Record<string, string> = { USER: "sion", CI_PIPELINE_IID: "4900" };
  d: Daemon | null = null;
  waiting: ReturnType<typeof Bun.spawn>[] = [];

  constructor(blocks: Block[]) {
    writeFileSync(
      this.config,
      blocks
        .filter((b) => b.lang === "toml" && !b.text.includes("…"))
        .map((b) => b.text)
        .join("\n\n"),
    );
  }

  async daemon(env: Record<string, string> = { RS_CONFIG: this.config }): Promise<Daemon> {
    this.d ??= await daemon(env);
    return this.d;
  }

  async line(line: string) {
    const { command, comment } = commandOf(line.replaceAll("/etc/releasestatus.toml", this.config));
    if (DAEMON.test(command)) return this.start(command);
    if (CURL.test(command)) return this.curl(command, comment);
    const sh = await this.sh(command.replace(/^releasestatus /, `${BINARY} `));
    expect({ line, code: sh.code, stderr: sh.stderr }).toMatchObject({ line, code: 0 });
    if (command.startsWith("releasestatus token ")) {
      writeFileSync(this.config, `${readFileSync(this.config, "utf8")}\n${sh.stdout}`);
      const who = /^who = "(.*)"$/m.exec(sh.stdout)?.[1] ?? "";
      this.env[`${who.split("-").pop()?.toUpperCase()}_TOKEN`] = /^rs_\S+$/m.exec(sh.stderr)?.[0] ?? "";
    }
    // `run` runs the command with RS_LOCK set to the locks it holds, which its comment may name.
    if (command.startsWith("releasestatus run ") && comment.startsWith("RS_LOCK="))
      expect(readFileSync(join(this.dir, "ran"), "utf8").trim()).toBe(
        comment.split(" ")[0]?.slice("RS_LOCK=".length) as string,
      );
  }

  // The settings on the line, but the port: the test's own.
  async start(command: string) {
    const settings = Object.fromEntries(
      command
        .split(" ")
        .slice(0, -1)
        .map((s) => s.split("=") as [string, string]),
    );
    delete settings.RS_PORT;
    await this.daemon(settings);
  }

  /**
   * A curl and its claim: "1" or "0" is the body, then "X-Release-Id: N", a reason code ("0, queued: …") or an HTTP
   * status ("0, 403 …") when the comment names them. "waits" is a start left waiting in line.
   */
  async curl(command: string, claim: string) {
    const d = await this.daemon();
    if (this.firstId !== null) await this.countUpTo(d, this.firstId);
    this.firstId = null;
    const asked = command
      .replace(/(localhost|host):8080/, `127.0.0.1:${d.port}`)
      .replace(/^curl /, "curl -sS -D headers ");
    // A start left waiting answers later: its headers go elsewhere, not over those of the lines after it.
    if (claim.startsWith("waits")) return this.wait(d, asked.replace("-D headers", "-D /dev/null"));
    const sh = await this.sh(asked);
    const headers = readFileSync(join(this.dir, "headers"), "utf8");
    const header = (name: string) => new RegExp(`^${name}: (.*?)\\r?$`, "im").exec(headers)?.[1];
    const [, digit, word] = /^([01])(?:[,;:]\s*([\w-]+))?/.exec(claim) ?? [];
    const got = { command, code: sh.code, body: digit === undefined ? undefined : sh.stdout } as Record<
      string,
      unknown
    >;
    const want = { command, code: 0, body: digit === undefined ? undefined : `${digit}\n` } as Record<string, unknown>;
    const id = /X-Release-Id: (\d+)/.exec(claim)?.[1];
    if (id) [got.id, want.id] = [header("x-release-id"), id];
    if (word && /^\d{3}$/.test(word)) [got.status, want.status] = [/^HTTP\/\S+ (\d{3})/.exec(headers)?.[1], word];
    else if (digit === "0" && word) [got.reason, want.reason] = [header("x-reason-code"), word];
    expect(got).toEqual(want);
  }

  // The first id a section's comments name: a fresh daemon's releases are numbered from 1, so starts on a lock of
  // its own bring it there.
  firstId: number | null = null;
  async countUpTo(d: Daemon, id: number) {
    for (let i = 1; i < id; i++) {
      const started = await d.get("/locks/count-up/start");
      await d.body(`/locks/count-up/stop?id=${started.headers.get("x-release-id")}`);
    }
  }

  async wait(d: Daemon, command: string) {
    const queued = async () =>
      ((await (await d.get("/locks?format=json")).json()) as { queue: unknown[] }[]).reduce(
        (n, s) => n + s.queue.length,
        0,
      );
    const before = await queued();
    this.waiting.push(Bun.spawn(["sh", "-c", command], { cwd: this.dir, stdout: "ignore", stderr: "ignore" }));
    await until(async () => (await queued()) > before, `${command} to wait in line`);
  }

  sh(command: string) {
    return runToEnd(["sh", "-c", command], this.dir, { ...this.env, ...(this.d ? { RS_URL: this.d.url } : {}) });
  }

  // Every ./NAME a line runs is a deploy that records the locks it was given.
  scripts(lines: string[]) {
    for (const [, name] of lines.join("\n").matchAll(/\.\/([\w.-]+)/g)) {
      writeFileSync(join(this.dir, name as string), `#!/bin/sh\necho "$RS_LOCK" > ran\n`);
      chmodSync(join(this.dir, name as string), 0o755);
    }
  }

  end() {
    for (const p of this.waiting) p.kill();
  }
}

describe("every sh block of docs/*.md runs against the binary and answers what its comments claim", () => {
  const sections = Map.groupBy(BLOCKS, (b) => b.section);
  for (const [name, blocks] of sections) {
    const sh = blocks.filter((b) => b.lang === "sh" && b.notRun === null);
    if (sh.length === 0) continue;
    test(name, async () => {
      const section = new Section(blocks);
      try {
        const lines = sh.flatMap(shLines);
        section.scripts(lines);
        section.firstId = Number(/X-Release-Id: (\d+)/.exec(lines.join("\n"))?.[1] ?? 0) || null;
        // `run` is an example of its own: each runs on a fresh daemon of the section's configuration.
        for (const line of lines) {
          if (/^releasestatus run /.test(line)) {
            const own = new Section(blocks);
            own.scripts(lines);
            await own.daemon();
            await own.line(line);
          } else await section.line(line);
        }
      } finally {
        section.end();
      }
    });
  }
});
