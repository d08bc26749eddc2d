// The binary as a client of its own server: `releasestatus run` holds the
// release for exactly as long as a command runs; `status` and `healthcheck` ask.
import { readFileSync } from "node:fs";
import { constants } from "node:os";

// Exit codes from sysexits.h, so scripts can tell "not now" from "broken".
const EXIT = {
  usage: 64, // EX_USAGE: the command line was wrong
  unavailable: 69, // EX_UNAVAILABLE: the server could not be reached, or answered unexpectedly
  software: 70, // EX_SOFTWARE: the lease was lost while the command ran
  tempFail: 75, // EX_TEMPFAIL: the release could not be had (held, blocked, wait ran out)
};

const RUN_HELP = `Usage: releasestatus run [options] -- COMMAND [ARGS...]

Takes the release, runs COMMAND with RS_RELEASE_ID set, renews the lease while it
runs, and stops exactly this release when it ends, however it ends.

Options:
  --name NAME        who is releasing (default: $USER)
  --reason TEXT      what is released, e.g. v2.3.1
  --wait SECONDS     wait in line up to this long for the release (default: do not wait)
  --ttl SECONDS      lease length, renewed every third of it (default 60)
  --url URL          the server (default: $RS_URL, else http://127.0.0.1:$RS_PORT, else http://127.0.0.1:8080)
  --token-file FILE  file holding the server's token (default: $RS_TOKEN)

Exit codes: COMMAND's own; 75 when the release could not be had; 69 when the server
cannot be reached or answers unexpectedly; 70 when the lease was lost while COMMAND
ran (COMMAND was sent SIGTERM); 64 for a wrong command line.
`;

const STATUS_HELP = `Usage: releasestatus status [--url URL] [--json]

Prints who holds the release, since when, and who blocked releasing.
--json prints the server's JSON status instead. Exit 69 when the server cannot be reached.
`;

type Server = { url: string; headers: Record<string, string> };

class UsageError extends Error {}
class Unavailable extends Error {}

export async function status(args: string[]): Promise<number> {
  try {
    const opts = parseOptions(args, ["url", "token-file"], ["json", "help"]);
    if (opts.help) return print(STATUS_HELP);
    const server = serverFrom(opts);
    const res = await call(server, `/status${opts.json ? "?format=json" : ""}`, 10_000);
    console.log((await res.text()).replace(/\n$/, ""));
    return 0;
  } catch (e) {
    return failure(e, "status");
  }
}

export async function healthcheck(): Promise<number> {
  const port = process.env.RS_PORT || "8080";
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(3000) });
    console.log(`${res.status} ${(await res.text()).trimEnd()}`);
    return res.ok ? 0 : 1;
  } catch (e) {
    console.error(`releasestatus healthcheck: cannot reach 127.0.0.1:${port}: ${(e as Error).message}`);
    return 1;
  }
}

export async function run(args: string[]): Promise<number> {
  let server: Server;
  let command: string[];
  let ttl: number;
  let query: URLSearchParams;
  try {
    const split = args.indexOf("--");
    const opts = parseOptions(
      split < 0 ? args : args.slice(0, split),
      ["name", "reason", "wait", "ttl", "url", "token-file"],
      ["help"],
    );
    if (opts.help) return print(RUN_HELP);
    command = split < 0 ? [] : args.slice(split + 1);
    if (command.length === 0)
      throw new UsageError("no command given: put it after --, e.g. releasestatus run -- ./deploy.sh");
    ttl = seconds(opts.ttl, "--ttl", 60, 1);
    const wait = seconds(opts.wait, "--wait", 0, 0);
    server = serverFrom(opts);
    query = new URLSearchParams({
      name: String(opts.name ?? process.env.USER ?? ""),
      reason: String(opts.reason ?? ""),
    });
    query.set("ttl", String(ttl));
    if (wait > 0) query.set("wait", String(wait));
    query.set("format", "json");
    const abort = new AbortController();
    const interrupted = onSignals(() => abort.abort()); // Ctrl-C while waiting in line leaves the line
    let res: Response;
    try {
      res = await call(server, `/start?${query}`, (wait + 30) * 1000, abort.signal);
    } finally {
      interrupted.dispose();
    }
    const answer = (await res.json().catch(() => null)) as {
      ok: boolean;
      reason: string;
      message: string;
      releaseId?: number;
    } | null;
    if (!answer || (!answer.ok && res.status !== 200))
      throw new Unavailable(`the server answered HTTP ${res.status}: ${answer?.message ?? "not the JSON expected"}`);
    if (!answer.ok) {
      console.error(`releasestatus run: not releasing (${answer.reason}): ${answer.message}`);
      return EXIT.tempFail;
    }
    return await holdWhileRunning(server, answer.releaseId ?? 0, ttl, command);
  } catch (e) {
    return failure(e, "run");
  }
}

/** Runs the command while renewing the lease; stops the release however the command ends. */
async function holdWhileRunning(server: Server, id: number, ttl: number, command: string[]): Promise<number> {
  let child: ReturnType<typeof Bun.spawn>;
  try {
    child = Bun.spawn(command, {
      stdio: ["inherit", "inherit", "inherit"],
      env: { ...process.env, RS_RELEASE_ID: String(id) },
    });
  } catch (e) {
    await stopRelease(server, id);
    console.error(`releasestatus run: cannot run ${command[0]}: ${(e as Error).message}`);
    return 127;
  }
  const forwarding = onSignals((signal) => child.kill(signal)); // the command decides how to end
  let leaseLost = false;
  const renewal = keepLease(server, id, ttl, (why) => {
    leaseLost = true;
    console.error(`releasestatus run: lost release #${id}: ${why}; sending the command SIGTERM`);
    child.kill("SIGTERM");
    setTimeout(() => child.kill("SIGKILL"), 10_000).unref(); // a command that ignores SIGTERM
  });
  const code = await child.exited;
  renewal.stop();
  forwarding.dispose();
  if (!leaseLost) await stopRelease(server, id);
  if (leaseLost) return EXIT.software;
  const signal = child.signalCode as NodeJS.Signals | null;
  return signal ? 128 + (constants.signals[signal] ?? 0) : code;
}

/** Renews every third of the lease; reports loss when refused, or when no renewal got through in time. */
function keepLease(server: Server, id: number, ttl: number, lost: (why: string) => void) {
  let renewedAt = Date.now();
  let done = false;
  const every = (ttl * 1000) / 3;
  const timer = setInterval(async () => {
    if (done) return;
    try {
      const res = await call(server, `/renew?id=${id}&ttl=${ttl}&format=json`, Math.min(every, 5000));
      const answer = (await res.json()) as { ok: boolean; reason: string; message: string };
      if (answer.ok) renewedAt = Date.now();
      else if (!done && answer.reason === "wrong-id") {
        done = true;
        lost(answer.message);
      }
    } catch {}
    if (!done && Date.now() - renewedAt >= ttl * 1000) {
      done = true;
      lost(`no renewal reached the server for ${ttl}s, so the lease has ended`);
    }
  }, every);
  return {
    stop: () => {
      done = true;
      clearInterval(timer);
    },
  };
}

async function stopRelease(server: Server, id: number) {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await call(server, `/stop?id=${id}`, 5000);
      return;
    } catch {
      await Bun.sleep(500);
    }
  }
  console.error(`releasestatus run: could not stop release #${id}; its lease will end it`);
}

async function call(server: Server, path: string, timeoutMs: number, signal?: AbortSignal): Promise<Response> {
  const signals = [AbortSignal.timeout(timeoutMs), ...(signal ? [signal] : [])];
  const method = path.startsWith("/status") ? "GET" : "POST";
  try {
    return await fetch(server.url + path, { method, headers: server.headers, signal: AbortSignal.any(signals) });
  } catch (e) {
    if (signal?.aborted) throw new Interrupted();
    throw new Unavailable(`cannot reach ${server.url}: ${(e as Error).message}`);
  }
}

class Interrupted extends Error {}

function onSignals(handler: (signal: NodeJS.Signals) => void) {
  const names: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const listeners = names.map((name) => {
    const listener = () => handler(name);
    process.on(name, listener);
    return [name, listener] as const;
  });
  return {
    dispose: () => {
      for (const [name, listener] of listeners) process.off(name, listener);
    },
  };
}

function serverFrom(opts: Record<string, string | boolean | undefined>): Server {
  const url = String(opts.url ?? process.env.RS_URL ?? `http://127.0.0.1:${process.env.RS_PORT || "8080"}`).replace(
    /\/+$/,
    "",
  );
  if (!/^https?:\/\/[^/]+$/.test(url))
    throw new UsageError(`--url ${url} is not valid: expected e.g. http://releases:8080`);
  let token = process.env.RS_TOKEN ?? null;
  if (typeof opts["token-file"] === "string") {
    try {
      token = readFileSync(opts["token-file"], "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      throw new UsageError(
        `cannot read --token-file ${opts["token-file"]}: ${(e as NodeJS.ErrnoException).code ?? "error"}`,
      );
    }
  }
  return { url, headers: token ? { Authorization: `Bearer ${token}` } : {} };
}

function parseOptions(args: string[], valued: string[], flags: string[]): Record<string, string | boolean | undefined> {
  const opts: Record<string, string | boolean | undefined> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const [key, inline] = arg.startsWith("--") ? arg.slice(2).split(/=(.*)/s, 2) : [arg, undefined];
    if (key === "h" || arg === "-h") opts.help = true;
    else if (flags.includes(key as string)) opts[key as string] = true;
    else if (valued.includes(key as string)) {
      const value = inline ?? args[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      opts[key as string] = value;
    } else throw new UsageError(`unknown option ${arg}: see --help`);
  }
  return opts;
}

function seconds(raw: string | boolean | undefined, name: string, fallback: number, min: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (typeof raw !== "string" || !/^\d+$/.test(raw) || n < min)
    throw new UsageError(`${name} ${raw} is not valid: expected a whole number of seconds, at least ${min}`);
  return n;
}

function failure(e: unknown, command: string): number {
  if (e instanceof Interrupted) return 130;
  const code = e instanceof UsageError ? EXIT.usage : e instanceof Unavailable ? EXIT.unavailable : null;
  if (code === null) throw e;
  console.error(`releasestatus ${command}: ${(e as Error).message}`);
  return code;
}

function print(text: string): number {
  console.log(text.replace(/\n$/, ""));
  return 0;
}
