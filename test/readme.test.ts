// The README's promises, checked: every command in it is run against the compiled binary (the quick starts, the
// curl contract, `releasestatus run`), its 1/0 table is what the daemon answers, and every relative link and
// anchor of README.md and docs/*.md leads somewhere. docker and make commands are skipped, each with its reason.
import { describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { BINARY, type Daemon, daemonsPerTest, freePort, runToEnd, tempDir, until } from "./daemon.ts";

const ROOT = resolve(import.meta.dir, "..");
const README = readFileSync(join(ROOT, "README.md"), "utf8");
const daemon = daemonsPerTest();

/** A line of a ```sh block: the command, and what its comment says it answers (`1`, `0`, `idle`), if anything. */
type Command = { section: string; line: string; command: string; claim: string | null };

/** The ```sh blocks of a Markdown text, line by line, with the `##` section each is in. */
function shCommands(markdown: string): Command[] {
  const commands: Command[] = [];
  let section = "";
  let inSh = false;
  let inOther = false;
  for (const line of markdown.split("\n")) {
    if (line.startsWith("```")) {
      if (inSh || inOther) inSh = inOther = false;
      else if (line === "```sh") inSh = true;
      else inOther = true;
    } else if (inSh && line.trim() !== "") {
      // A comment is two or more spaces then `# `; "# 1: …" claims the answer 1.
      const [, command = line, comment] = /^(.*?)(?:\s{2,}#\s(.*))?$/.exec(line) ?? [];
      commands.push({ section, line, command: command.trim(), claim: comment?.match(/^([\w-]+):/)?.[1] ?? null });
    } else if (!inOther && line.startsWith("## ")) section = line.slice(3);
  }
  return commands;
}

const COMMANDS = shCommands(README);
const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

// Commands this suite cannot run, and who runs them instead.
const SKIPPED: [RegExp, string][] = [
  [/^docker /, "needs a Docker engine and the base image: CI (.ci/run) builds both and runs `make test-container`"],
  [
    /^make (run|test)\b/,
    "`make test` is what runs this suite, and `make run` runs the binary as the download quick start does below",
  ],
  [
    /^make container\b/,
    "needs a Docker engine: CI (.ci/run) runs `make test-container`, which builds the image with it",
  ],
];
const skipReason = (c: Command) => SKIPPED.find(([pattern]) => pattern.test(c.command))?.[1] ?? null;

/** The README's commands for `localhost:8080` pointed at `d`. */
const atDaemon = (command: string, d: Daemon) => command.replaceAll("localhost:8080", `127.0.0.1:${d.port}`);

/** Runs a shell command line in `cwd`, to completion. */
const sh = (command: string, cwd: string, env: Record<string, string> = {}) =>
  runToEnd(["sh", "-c", command], cwd, env);

describe("every command of the README is run by this suite, or skipped with a reason", () => {
  test("the README has commands in its quick starts, its curl contract and its run section", () => {
    const sections = new Set(COMMANDS.map((c) => c.section));
    for (const section of [
      "Quick start: download the binary",
      "Quick start: run the image",
      "Quick start: build from source",
      "The curl contract",
      "`releasestatus run`",
    ])
      expect(sections).toContain(section);
  });

  // A command anywhere else is not run below: extend this suite for it, or give the reason it is skipped.
  test("each command is a curl of the contract, a releasestatus of the run section, a step of the download, or skipped with its reason", () => {
    const runnable = (c: Command) =>
      (c.section === "The curl contract" && /^curl /.test(c.command)) ||
      (c.section === "`releasestatus run`" && /^releasestatus /.test(c.command)) ||
      c.section === "Quick start: download the binary" ||
      skipReason(c) !== null;
    expect(COMMANDS.filter((c) => !runnable(c)).map((c) => `${c.section}: ${c.line}`)).toEqual([]);
  });

  for (const c of COMMANDS.filter((c) => skipReason(c) !== null)) test.skip(`${c.command}: ${skipReason(c)}`, () => {});
});

describe("the download quick start verifies, unpacks and runs an archive as `make dist` lays it out", () => {
  const steps = COMMANDS.filter((c) => c.section === "Quick start: download the binary");

  test("its archive is named for this version", () => {
    const archive = steps.map((c) => /releasestatus-([^-\s]+)-(\S+)\.tar\.gz/.exec(c.command)).find(Boolean);
    expect(archive?.[1]).toBe(VERSION);
  });

  test("each step exits 0, and the daemon it starts answers on RS_PORT and keeps its state in releasestatus.db", async () => {
    const name = /(releasestatus-\S+)\.tar\.gz/.exec(steps.map((c) => c.command).join("\n"))?.[1] ?? "";
    expect(name).not.toBe("");
    // The archive as `make dist` makes it: one folder with the binary, README.md, LICENSE and docs/; SHA256SUMS
    // lists every platform's archive, of which only this one was downloaded.
    const dir = tempDir();
    mkdirSync(join(dir, "build", name, "docs"), { recursive: true });
    for (const file of [BINARY, join(ROOT, "README.md"), join(ROOT, "LICENSE")])
      copyFileSync(file, join(dir, "build", name, file.split("/").pop() as string));
    for (const page of readdirSync(join(ROOT, "docs")))
      copyFileSync(join(ROOT, "docs", page), join(dir, "build", name, "docs", page));
    // gzip -1: the binary is ~100 MB, and the fastest level is as much a .tar.gz.
    expect((await sh(`tar -C build -cf - ${name} | gzip -1 > ${name}.tar.gz && rm -r build`, dir)).code).toBe(0);
    const sums = await sh(`sha256sum ${name}.tar.gz`, dir);
    writeFileSync(join(dir, "SHA256SUMS"), `${sums.stdout}${"0".repeat(64)}  releasestatus-${VERSION}-other.tar.gz\n`);

    for (const step of steps.filter((c) => !c.command.includes("RS_PORT="))) {
      const ran = await sh(step.command, dir);
      expect({ step: step.command, code: ran.code, stderr: ran.stderr }).toMatchObject({ code: 0 });
    }
    const start = steps.find((c) => c.command.includes("RS_PORT="));
    expect(start?.command).toMatch(/^RS_PORT=8080 /);
    const port = freePort();
    // exec env: the daemon replaces the shell, so the test stops the daemon itself.
    const proc = Bun.spawn(["sh", "-c", `exec env ${start?.command.replace("RS_PORT=8080", `RS_PORT=${port}`)}`], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? "", RS_HOST: "127.0.0.1" },
      stdin: "ignore",
      stdout: "ignore",
      stderr: "ignore",
    });
    try {
      await until(async () => (await fetch(`http://127.0.0.1:${port}/healthz`)).ok, "the unpacked daemon to answer");
      expect(await (await fetch(`http://127.0.0.1:${port}/start?name=sion`)).text()).toBe("1\n");
      expect(existsSync(join(dir, "releasestatus.db"))).toBe(true);
    } finally {
      proc.kill("SIGTERM");
    }
    expect(await proc.exited).toBe(0);
  });
});

describe("the curl contract answers what the README says, in order, on a fresh daemon", () => {
  const curls = COMMANDS.filter((c) => c.section === "The curl contract");

  test("every curl line says what it answers", () => {
    expect(curls.length).toBeGreaterThan(3);
    expect(curls.filter((c) => c.claim === null).map((c) => c.line)).toEqual([]);
  });

  test("each answer is the one its comment claims: the digit itself, or the first word of the status", async () => {
    const d = await daemon();
    for (const c of curls) {
      const ran = await sh(atDaemon(c.command, d), tempDir());
      expect({ command: c.command, code: ran.code }).toEqual({ command: c.command, code: 0 });
      const claim = c.claim ?? "";
      const answer = /^[01]$/.test(claim) ? ran.stdout : (ran.stdout.split("\n")[0] ?? "").split(":")[0];
      expect({ command: c.command, answer }).toEqual({
        command: c.command,
        answer: /^[01]$/.test(claim) ? `${claim}\n` : claim,
      });
    }
  });

  test("the `curl -i` transcript's status line, headers and body are what a refused start shows", async () => {
    const d = await daemon();
    const transcript = /```\n\$ (curl -i [^\n]+)\n([\s\S]*?)```/.exec(README.split("## The curl contract")[1] ?? "");
    expect(transcript).not.toBeNull();
    const [, command = "", shown = ""] = transcript ?? [];
    // The transcript shows sion's release v2.3.1 running.
    expect(await d.body("/start?name=sion&reason=v2.3.1")).toBe("1\n");
    const got = (await sh(atDaemon(command, d), tempDir())).stdout.replaceAll("\r", "");
    for (const line of shown.split("\n").filter((l) => l !== "")) {
      // Ids and times differ from run to run: any number stands for any number.
      const pattern = line.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\d+/g, "\\d+");
      expect({ line, found: new RegExp(`^${pattern}`, "im").test(got) }).toEqual({ line, found: true });
    }
  });
});

describe("the 1/0 table is what each request answers in each state", () => {
  // How the test brings a fresh daemon into each state the table names.
  const SETUP: Record<string, string[]> = {
    "not running, not blocked": [],
    running: ["/start?name=sion"],
    blocked: ["/block?name=ana"],
    "running and blocked": ["/start?name=sion", "/block?name=ana"],
  };
  const table = (README.split("## The curl contract")[1] ?? "").split("\n").filter((l) => /^\| [a-z]/.test(l));
  const rows = table.map((l) =>
    l
      .split("|")
      .slice(1, -1)
      .map((cell) => cell.trim().replaceAll("`", "")),
  );
  const [head = [], ...states] = rows;
  const requests = head.slice(1);

  test("the table names every request of the original and states the test can set up", () => {
    expect(requests).toEqual(["/start", "/stop", "/block", "/unblock"]);
    expect(states.map((row) => row[0])).toEqual(Object.keys(SETUP));
  });

  test("each cell is the daemon's answer to its request in its state", async () => {
    const d = await daemon();
    for (const [state = "", ...answers] of states)
      for (const [i, request] of requests.entries()) {
        await d.body("/stop");
        await d.body("/unblock");
        for (const step of SETUP[state] ?? []) expect(await d.body(step)).toBe("1\n");
        expect({ state, request, answer: await d.body(`${request}?name=bob`) }).toEqual({
          state,
          request,
          answer: `${answers[i]}\n`,
        });
      }
  });
});

describe("the README's releasestatus commands run against a daemon and exit 0", () => {
  test("`run` runs the command with the release held and gives it back; `status` prints the state", async () => {
    const d = await daemon();
    const dir = tempDir();
    // The deploy script the README runs: it records that it ran, and with which arguments.
    writeFileSync(join(dir, "deploy.sh"), `#!/bin/sh\necho "$@" > deployed\n`, { mode: 0o755 });
    const commands = COMMANDS.filter((c) => c.section === "`releasestatus run`");
    expect(commands.map((c) => c.command.split(" ")[1])).toEqual(["run", "status"]);
    for (const c of commands) {
      const ran = await sh(c.command.replace(/^releasestatus /, `${BINARY} `), dir, { RS_URL: d.url, USER: "sion" });
      expect({ command: c.command, code: ran.code, stderr: ran.stderr }).toMatchObject({ code: 0 });
      if (c.command.includes(" status")) expect(ran.stdout).toStartWith("idle:");
    }
    expect(readFileSync(join(dir, "deployed"), "utf8")).toBe("staging\n");
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.map((e: { kind: string; name: string }) => `${e.kind} ${e.name}`)).toEqual([
      "stopped sion",
      "started sion",
    ]);
  });
});

describe("every relative link and anchor of README.md and docs/*.md leads somewhere", () => {
  /** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens, repeats numbered. */
  function anchors(markdown: string): Set<string> {
    const seen = new Map<string, number>();
    const found = new Set<string>();
    let fenced = false;
    for (const line of markdown.split("\n")) {
      if (line.startsWith("```")) fenced = !fenced;
      if (fenced || !/^#{1,6} /.test(line)) continue;
      const slug = line
        .replace(/^#+ /, "")
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, "")
        .replace(/ /g, "-");
      const n = seen.get(slug) ?? 0;
      seen.set(slug, n + 1);
      found.add(n === 0 ? slug : `${slug}-${n}`);
    }
    return found;
  }

  const files = [
    "README.md",
    ...readdirSync(join(ROOT, "docs"))
      .filter((f) => f.endsWith(".md"))
      .map((f) => `docs/${f}`),
  ];

  test("there are pages in docs/ to check", () => {
    expect(files.length).toBeGreaterThan(5);
  });

  for (const file of files)
    test(`${file}: every relative link names a file that exists, and every anchor a heading of it`, () => {
      const text = readFileSync(join(ROOT, file), "utf8");
      const broken: string[] = [];
      for (const [, target = ""] of text.replace(/```[\s\S]*?```/g, "").matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target)) continue; // https:, mailto:
        const [path = "", anchor] = target.split("#");
        const to = path === "" ? join(ROOT, file) : resolve(dirname(join(ROOT, file)), path);
        if (!existsSync(to)) broken.push(`${target}: no such file`);
        else if (anchor !== undefined && !anchors(readFileSync(to, "utf8")).has(anchor))
          broken.push(`${target}: no such heading`);
      }
      expect(broken).toEqual([]);
    });
});

describe("where the daemon points to its documentation, the page exists", () => {
  /** The docs/ pages a text names, each checked to exist. */
  const pagesNamed = (text: string) => [...text.matchAll(/docs\/[a-z-]+\.md/g)].map((m) => m[0]);

  test("a 404, an empty calendar, no webhooks and --help each name a page of docs/ that exists", async () => {
    const d = await daemon();
    const answers = {
      "/nope": (await d.get("/nope")).headers.get("x-reason") ?? "",
      "/freezes": await d.body("/freezes"),
      "/webhooks": await d.body("/webhooks"),
      "--help": (await sh(`${BINARY} --help`, tempDir())).stdout,
    };
    for (const [asked, answer] of Object.entries(answers)) {
      expect({ asked, names: pagesNamed(answer).length > 0 }).toEqual({ asked, names: true });
      for (const page of pagesNamed(answer)) expect(existsSync(join(ROOT, page))).toBe(true);
    }
  });
});
