// Commands for whoever runs the daemon: `check-config FILE` checks a
// configuration file without starting, and `token` makes a new named token.
import { digestOf, RIGHTS, type Right } from "./access.ts";
import { ConfigError, describeToken, describeTrust, parseConfigFile, readConfig, readConfigFile } from "./config.ts";
import { describeSchedule, upcoming } from "./freezes.ts";
import { LOCK_NAME_RULE, validLockName } from "./names.ts";
import { send } from "./notify/deliver.ts";
import { render } from "./notify/formats.ts";
import type { Webhook } from "./notify/webhook.ts";
import { warmUp } from "./oidc.ts";
import { print } from "./terminal.ts";
import { keySources } from "./trust.ts";
import { visible } from "./visible.ts";
import { iso } from "./words.ts";

const EXIT_INVALID = 2; // as the daemon exits on a bad configuration

/**
 * `releasestatus check-config [--online] FILE`: 0 and a summary when the daemon would start with it, 2 and the
 * problem when not. --online also fetches the keys of each [[trust]]'s issuer: 1 when one cannot be had.
 */
export async function checkConfig(args: string[]): Promise<number> {
  const online = args[0] === "--online";
  const [path, ...rest] = online ? args.slice(1) : args;
  if (path === undefined || path.startsWith("-") || rest.length > 0)
    return fail(
      "usage: releasestatus check-config FILE (a TOML configuration file, as RS_CONFIG names it); check-config --online FILE also fetches each [[trust]] issuer's keys",
    );
  try {
    const file = readConfigFile(path);
    // As the daemon would read it with this environment (which wins over the file); a port may come later.
    const port = process.env.RS_PORT || file.settings.RS_PORT ? {} : { RS_PORT: "1" };
    const cfg = readConfig({ ...process.env, RS_CONFIG: path, ...port });
    const lines = [`${path} is valid.`];
    const settings = Object.keys(file.settings);
    lines.push(settings.length ? `settings: ${settings.join(", ")}` : "settings: none (all from the environment)");
    lines.push(`reading: ${cfg.access.read === "open" ? "open to anyone" : "needs a token"}`);
    lines.push(`tokens: ${file.tokens.length}`);
    for (const t of file.tokens) lines.push(`  ${describeToken(t)}`);
    // The calendar as it will fall, so a person can see it is what they meant.
    lines.push(`webhooks: ${cfg.webhooks.length}`);
    for (const h of cfg.webhooks)
      lines.push(
        `  ${h.label} (${h.format}${h.secret ? ", signed" : ""}): ${[...h.events].join(", ")} on ${h.locks?.join(", ") ?? "every lock"}${h.remindLabel ? `; reminders every ${h.remindLabel}` : ""}`,
      );
    lines.push(`trust: ${cfg.access.trust.length}`);
    for (const t of cfg.access.trust) lines.push(`  ${describeTrust(t)}`);
    if (online) {
      const found = await warmUp(keySources(cfg.access.trust));
      for (const line of found) lines.push(`  ${line}`);
      if (found.some((l) => l.startsWith("cannot"))) {
        print(`${lines.join("\n")}\n`);
        return 1;
      }
    }
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

/** `releasestatus webhook-test [--webhook N]`: a ping to each webhook of RS_CONFIG, and how it answered. */
export async function webhookTest(args: string[]): Promise<number> {
  if (!(args.length === 0 || (args.length === 2 && args[0] === "--webhook" && /^[1-9]\d*$/.test(args[1] ?? ""))))
    return fail(
      "usage: releasestatus webhook-test [--webhook N] (N counts the [[webhook]] tables of RS_CONFIG from 1)",
    );
  if (!process.env.RS_CONFIG) return fail("RS_CONFIG is not set: name the configuration file that lists the webhooks");
  let hooks: Webhook[];
  try {
    hooks = readConfig({ ...process.env, RS_PORT: process.env.RS_PORT || "1" }).webhooks;
  } catch (e) {
    if (e instanceof ConfigError) return fail(e.message);
    throw e;
  }
  const chosen =
    args[1] === undefined
      ? hooks.map((h, i) => [i + 1, h] as const)
      : [[Number(args[1]), hooks[Number(args[1]) - 1]] as const];
  if (chosen.length === 0) return fail(`${process.env.RS_CONFIG} has no [[webhook]]`);
  let failed = 0;
  for (const [n, hook] of chosen) {
    if (!hook) return fail(`there is no webhook ${n}: ${process.env.RS_CONFIG} has ${hooks.length}`);
    const now = Date.now();
    const message = render(hook, `msg_ping_${now}`, "ping", now);
    const answer = await send(hook.url, message, now, { readBody: true });
    const ok = answer.status !== null && answer.status >= 200 && answer.status < 300;
    if (!ok) failed++;
    const said =
      answer.status === null ? `no answer: ${answer.error}` : `${answer.status}${answer.body ? ` ${answer.body}` : ""}`;
    print(`${n}. ${hook.label} (${hook.format}): ${said}${ok ? "" : "  <- not accepted"}`);
  }
  return failed ? 1 : 0;
}

const TOKEN_USAGE =
  "usage: releasestatus token --who NAME --can release,block,override --locks prod,staging (or --locks '*')";
const TOKEN_HELP = `${TOKEN_USAGE}

Makes a new random token for NAME, shown once on stderr, and prints on stdout the [[token]]
block that grants it, to append to the RS_CONFIG file after its settings (releasestatus token
... >> releasestatus.toml), then reload the daemon (kill -HUP <pid>).
  --can    rights, comma-separated: release (start, stop, renew), block (block, unblock),
           override (start during a freeze), urgent (wait ahead of every non-urgent waiter)
  --locks  lock names, comma-separated (a lock and everything under it), or '*' for every lock and the root`;
// TOML reads every key below a table as that table's: a setting written after this block would be the token's.
const TOKEN_PLACE = "# Goes after the settings (port, locks, …): those go before the first table.";

/** `releasestatus token`: a new random token, shown once, and the [[token]] block that grants it. */
export function makeToken(args: string[]): number {
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h")) return print(`${TOKEN_HELP}\n`);
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
    TOKEN_PLACE,
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
  // The token on stderr, the block on stdout: `releasestatus token … >> releasestatus.toml` keeps the token out of the file.
  console.error(`A new token for ${who}, shown only now and stored nowhere: hand it over privately.\n\n${secret}\n`);
  console.error("Its [[token]] block, for the RS_CONFIG file (then reload the daemon: kill -HUP <pid>):\n");
  return print(`${block}\n`);
}

function fail(message: string): number {
  console.error(`releasestatus: ${visible(message)}`); // it may quote an argument
  return EXIT_INVALID;
}
