// Commands for whoever runs the daemon: `check-config FILE` checks a
// configuration file without starting, and `token` makes a new named token.
import { digestOf, RIGHTS, type Right } from "./access.ts";
import { ConfigError, describeToken, parseConfigFile, readConfig, readConfigFile } from "./config.ts";
import { describeSchedule, upcoming } from "./freezes.ts";
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { iso } from "./release.ts";
import { print } from "./terminal.ts";

const EXIT_INVALID = 2; // as the daemon exits on a bad configuration

/** `releasestatus check-config FILE`: 0 and a summary when the daemon would start with it, 2 and the problem when not. */
export function checkConfig(args: string[]): number {
  const [path, ...rest] = args;
  if (path === undefined || path.startsWith("-") || rest.length > 0)
    return fail("usage: releasestatus check-config FILE (a TOML configuration file, as RS_CONFIG names it)");
  try {
    const file = readConfigFile(path);
    // The file alone, as the daemon would read it; a port it does not set comes from RS_PORT at start.
    const cfg = readConfig({ RS_CONFIG: path, ...(file.settings.RS_PORT ? {} : { RS_PORT: "1" }) });
    const lines = [`${path} is valid.`];
    const settings = Object.keys(file.settings);
    lines.push(settings.length ? `settings: ${settings.join(", ")}` : "settings: none (all from the environment)");
    lines.push(`reading: ${cfg.access.read === "open" ? "open to anyone" : "needs a token"}`);
    lines.push(`tokens: ${file.tokens.length}`);
    for (const t of file.tokens) lines.push(`  ${describeToken(t)}`);
    // The calendar as it will fall, so a person can see it is what they meant.
    lines.push(`freeze windows: ${cfg.freezes.length}`);
    for (const { window: w, occurrences } of upcoming(cfg.freezes, Date.now(), 3)) {
      lines.push(`  ${w.reason} on ${w.locks?.join(", ") ?? "every lock"}: ${describeSchedule(w)}`);
      for (const o of occurrences)
        lines.push(`    ${o.fromLocal} - ${o.untilLocal}  (UTC ${iso(o.from)} - ${iso(o.until)})`);
      if (occurrences.length === 0) lines.push("    no occurrence from now on");
    }
    return print(`${lines.join("\n")}\n`);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
}

const TOKEN_USAGE =
  "usage: releasestatus token --who NAME --can release,block,override --locks prod,staging (or --locks '*')";

/** `releasestatus token`: a new random token, shown once, and the [[token]] block that grants it. */
export function makeToken(args: string[]): number {
  const options = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    const [key, value] = [args[i], args[i + 1]];
    if (!key || !["--who", "--can", "--locks"].includes(key) || value === undefined || value === "")
      return fail(`${key ?? ""} is not understood: ${TOKEN_USAGE}`);
    options.set(key, value);
  }
  const who = options.get("--who");
  const can = options.get("--can")?.split(",");
  const locks = options.get("--locks")?.split(",");
  if (!who || !can || !locks) return fail(TOKEN_USAGE);
  if (!can.every((c) => RIGHTS.includes(c as Right)))
    return fail(`--can ${can.join(",")} is not valid: expected some of ${RIGHTS.join(", ")}, separated by commas`);
  if (!(locks.length === 1 && locks[0] === "*") && !locks.every(validLockName))
    return fail(`--locks ${locks.join(",")} is not valid: expected '*' or lock names (${LOCK_NAME_RULE})`);
  const secret = `rs_${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url")}`;
  const block = [
    "[[token]]",
    `who = ${JSON.stringify(who)}`,
    `can = [${can.map((c) => JSON.stringify(c)).join(", ")}]`,
    `locks = [${locks.map((l) => JSON.stringify(l)).join(", ")}]`,
    `sha256 = "${digestOf(secret)}"`,
  ].join("\n");
  // The block is checked as the daemon will check it, so what is printed always loads.
  try {
    parseConfigFile("the new [[token]]", block);
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
  console.error(`A new token for ${who}. It is shown only now and stored nowhere: hand it over privately.`);
  print(secret);
  console.error("\nAdd this to the RS_CONFIG file, then reload the daemon (kill -HUP <pid>):\n");
  return print(`${block}\n`);
}

function fail(message: string): number {
  console.error(`releasestatus: ${message}`);
  return EXIT_INVALID;
}
