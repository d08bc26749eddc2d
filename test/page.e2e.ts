// The page, in real headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no browser is downloaded). Runs in `make test-browser`.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { type Daemon, freePort, startDaemon, tempDir } from "./daemon.ts";

const ARTIFACTS = join(import.meta.dir, "..", "artifacts");
let browser: Browser;
const daemons: Daemon[] = [];
const pages: Page[] = [];
const consoleErrors: string[] = [];

beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});
afterAll(async () => {
  await browser?.close();
});
afterEach(async () => {
  for (const p of pages.splice(0)) await p.close();
  for (const d of daemons.splice(0)) if (d.proc.exitCode === null) await d.stop("SIGKILL");
  expect(consoleErrors.splice(0)).toEqual([]);
});

async function open(env: Record<string, string> = {}, viewport = { width: 1000, height: 800 }) {
  const d = await startDaemon(env);
  daemons.push(d);
  const page = await browser.newPage({ viewport });
  pages.push(page);
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(e.message));
  await page.goto(`${d.url}/`);
  await page.locator("#connection", { hasText: "live" }).waitFor();
  return { d, page };
}
const headline = (page: Page) => page.locator("#headline").textContent();
const shot = (page: Page, name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

describe("the page", () => {
  test("shows idle when nothing runs", async () => {
    const { page } = await open();
    expect(await headline(page)).toBe("● Idle");
    expect(await page.locator("#holder").textContent()).toBe("No release is running. Releasing is open.");
    expect(await page.locator("#start").isEnabled()).toBe(true);
    expect(await page.locator("#stop").isDisabled()).toBe(true);
    await shot(page, "idle");
  });

  test("a start from the page shows the holder and a running clock", async () => {
    const { d, page } = await open();
    await page.click("#start");
    await page.fill("#start-name", "sion");
    await page.fill("#start-reason", "v2.3.1");
    await page.click("#start-dialog button.primary");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    expect(await page.locator("#holder").textContent()).toBe("Release #1 by sion: v2.3.1");
    const first = await page.locator("#timing .clock").textContent();
    await page.waitForFunction((before) => document.querySelector("#timing .clock")?.textContent !== before, first);
    const status = await (await d.get("/status?format=json")).json();
    expect(status.release).toMatchObject({ name: "sion", reason: "v2.3.1" });
    await shot(page, "running");
  });

  test("a change made with curl appears in an open page without reloading", async () => {
    const { d, page } = await open();
    const sent = Date.now();
    await d.body("/start?name=from-a-script&reason=hotfix");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    console.log(`page updated ${Date.now() - sent} ms after the start was answered`);
    expect(await page.locator("#holder").textContent()).toBe("Release #1 by from-a-script: hotfix");
    await page.locator("#history li", { hasText: "release #1 started by from-a-script: hotfix" }).waitFor();
    await d.body("/stop");
    await page.locator("#headline", { hasText: "Idle" }).waitFor();
  });

  test("block and unblock from the page", async () => {
    const { d, page } = await open();
    await page.click("#block");
    await page.fill("#block-name", "ana");
    await page.fill("#block-reason", "quarterly freeze");
    await page.click("#block-dialog button.primary");
    await page.locator("#headline", { hasText: "Blocked" }).waitFor();
    expect(await page.locator("#block-info").textContent()).toContain("Releasing blocked by ana since");
    expect(await page.locator("#block-info").textContent()).toContain(": quarterly freeze");
    expect((await (await d.get("/status?format=json")).json()).block.name).toBe("ana");
    await shot(page, "blocked");
    await page.click("#unblock");
    await page.locator("#headline", { hasText: "Idle" }).waitFor();
  });

  test("the stop button stops the release the page shows", async () => {
    const { d, page } = await open();
    await d.body("/start?name=sion");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    await page.click("#stop");
    await page.locator("#headline", { hasText: "Idle" }).waitFor();
    expect((await (await d.get("/history?format=json")).json()).events[0]).toMatchObject({
      kind: "stopped",
      releaseId: 1,
    });
  });

  test("a hostile name renders as text and no script runs", async () => {
    const { d, page } = await open();
    let dialogs = 0;
    page.on("dialog", async (dialog) => {
      dialogs++;
      await dialog.dismiss();
    });
    const hostile = "<img src=x onerror=alert(1)>";
    await d.body(
      `/start?name=${encodeURIComponent(hostile)}&reason=${encodeURIComponent("<script>alert(2)</script>")}`,
    );
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    expect(await page.locator("#holder").textContent()).toBe(`Release #1 by ${hostile}: <script>alert(2)</script>`);
    expect(await page.locator("img").count()).toBe(0);
    await Bun.sleep(300);
    expect(dialogs).toBe(0);
  });

  test("the daemon's waiters show in order", async () => {
    const { d, page } = await open();
    await d.body("/start?name=holder");
    const waiters = [
      d.body("/start?name=first&wait=30"),
      Bun.sleep(100).then(() => d.body("/start?name=second&wait=30")),
    ];
    await page.locator("#queue li", { hasText: "second" }).waitFor();
    const items = await page.locator("#queue li").allTextContents();
    expect(items[0]).toStartWith("first, waiting since");
    expect(items[1]).toStartWith("second, waiting since");
    await d.body("/stop");
    await d.body("/stop");
    await d.body("/stop");
    await Promise.all(waiters);
  });

  test("shows the estimate from recent releases", async () => {
    const { d, page } = await open();
    await d.body("/start");
    await Bun.sleep(1100);
    await d.body("/stop");
    await d.body("/start?name=next");
    await page.locator("#timing", { hasText: /Usually takes \d+ s; expected around/ }).waitFor();
  });

  test("asks for the token once when the daemon needs one, and keeps it for the tab", async () => {
    const { d, page } = await open({ RS_TOKEN: "page-token" });
    await page.click("#block");
    await page.fill("#block-name", "ana");
    await page.fill("#block-reason", "freeze");
    await page.click("#block-dialog button.primary");
    await page.locator("#token-dialog").waitFor();
    await page.fill("#token-input", "page-token");
    await page.click("#token-dialog button.primary");
    await page.locator("#headline", { hasText: "Blocked" }).waitFor();
    await page.click("#unblock"); // no second prompt
    await page.locator("#headline", { hasText: "Idle" }).waitFor();
    expect(await page.locator("#token-dialog").isVisible()).toBe(false);
    const history = await d.body("/history");
    expect(history).toContain("releasing unblocked by ana");
    expect(await page.content()).not.toContain("page-token");
  });

  test("reconnects by itself after the daemon restarts", async () => {
    const db = join(tempDir(), "page.db");
    const port = freePort();
    const first = await startDaemon({ RS_DB: db }, { port });
    const page = await browser.newPage();
    pages.push(page);
    await page.goto(`${first.url}/`);
    await page.locator("#connection", { hasText: "live" }).waitFor();
    await first.stop();
    await page.locator("#connection", { hasText: "reconnecting" }).waitFor();
    const second = await startDaemon({ RS_DB: db }, { port });
    daemons.push(second);
    await second.body("/start?name=after-restart");
    await page.locator("#holder", { hasText: "after-restart" }).waitFor({ timeout: 15_000 });
    expect(await page.locator("#connection").textContent()).toBe("live");
    consoleErrors.splice(0); // the browser logs the refused connections while the daemon is down
  }, 30_000);

  test("fits a phone-width screen and works in dark mode", async () => {
    const { d, page } = await open({}, { width: 360, height: 740 });
    await page.emulateMedia({ colorScheme: "dark" });
    await d.body(`/start?name=${"a-very-long-name-".repeat(8)}&reason=v2.3.1`);
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    expect(background).toBe("rgb(20, 20, 20)");
    await shot(page, "phone-dark");
  });

  test("every control has an accessible name", async () => {
    const { page } = await open();
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll("button, input")]
        .filter((el) => !(el.textContent?.trim() || (el as HTMLInputElement).labels?.length))
        .map((el) => el.outerHTML),
    );
    expect(unnamed).toEqual([]);
  });
});
