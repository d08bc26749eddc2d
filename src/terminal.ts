// What the command line shares: printing to stdout, and reading a secret from a file.

// console, not process.stdout: the latter loads Node's stream machinery, ~9 ms of start-up.
export function print(text: string): number {
  console.log(text.replace(/\n$/, ""));
  return 0;
}

/** A secret kept in a file (a container secret, say): its text without the trailing newline. */
export function readSecretFile(path: string): { ok: true; secret: string } | { ok: false; code: string } {
  const { readFileSync } = require("node:fs") as typeof import("node:fs"); // loaded only when needed: it slows start-up
  try {
    return { ok: true, secret: readFileSync(path, "utf8").replace(/\r?\n$/, "") };
  } catch (e) {
    return { ok: false, code: (e as NodeJS.ErrnoException).code ?? "error" };
  }
}
