// The page, in real headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no browser is downloaded). Runs in `make test-browser`.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
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

/** Opens a page of the daemon: the default lock's page unless told otherwise ("/" is the board). */
async function open(
  env: Record<string, string> = {},
  viewport = { width: 1000, height: 800 },
  path = "/locks/default/",
) {
  const d = await startDaemon(env);
  daemons.push(d);
  const page = await browser.newPage({ viewport });
  pages.push(page);
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(e.message));
  await page.goto(`${d.url}${path}`);
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
    expect(await page.locator("#start").isVisible()).toBe(true);
    expect(await page.locator("#stop").isHidden()).toBe(true); // an action that cannot work takes no room
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
    // It asks first, naming whose release it is: one click must not end someone else's deploy.
    expect(await page.locator("#stop-whose").textContent()).toContain("Release #1 by sion will end now");
    await page.click("#stop-dialog button.primary");
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
    await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 300))); // any injected handler would have run
    expect(dialogs).toBe(0);
  });

  test("the daemon's waiters show in order", async () => {
    const { d, page } = await open();
    await d.body("/start?name=holder");
    const first = d.body("/start?name=first&wait=30");
    await page.locator("#queue li", { hasText: "first" }).waitFor();
    const waiters = [first, d.body("/start?name=second&wait=30")];
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
    await d.body("/stop");
    await d.body("/start?name=next");
    // A release of a few milliseconds is not "0 s".
    await page.locator("#timing", { hasText: /Usually takes under a second; expected around \d\d:\d\d/ }).waitFor();
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
    await page.goto(`${first.url}/locks/default/`);
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

describe("the page of one lock", () => {
  test("a block while a release runs is a banner of its own, outside the release's card", async () => {
    const { d, page } = await open();
    await d.body("/start?name=sion");
    await d.body("/block?name=ana&reason=freeze");
    await page.locator("#block-info", { hasText: "Releasing everywhere blocked by ana" }).waitFor();
    expect(await page.locator("#state #block-info").count()).toBe(0);
    expect(await page.locator("#state").getAttribute("class")).toContain("running");
  });

  test("while the daemon cannot be reached, the page looks stale: greyed, last known as of when, no buttons", async () => {
    const { d, page } = await open();
    await d.body("/start?name=sion");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    await d.stop();
    await page.locator("#stale", { hasText: /showing what was last known, as of \d\d:\d\d/ }).waitFor();
    expect(await page.evaluate(() => document.body.classList.contains("stale"))).toBe(true);
    expect(await page.locator("#stop").isHidden()).toBe(true);
    expect(await page.locator("#start").isHidden()).toBe(true);
    consoleErrors.splice(0); // the browser logs the refused connections
  });

  test("a very long name stays on two lines, with the whole name in its title", async () => {
    const { d, page } = await open({}, { width: 360, height: 740 });
    const long = "a-very-long-name-".repeat(11);
    await d.body(`/start?name=${long}`);
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    const { height, lineHeight } = await page.evaluate(() => {
      const el = document.querySelector("#holder") as HTMLElement;
      return {
        height: el.getBoundingClientRect().height,
        lineHeight: Number.parseFloat(getComputedStyle(el).lineHeight),
      };
    });
    expect(height).toBeLessThanOrEqual(lineHeight * 2 + 1);
    expect(await page.locator("#holder").getAttribute("title")).toContain(long);
  });

  test("works on a named lock, and shows a release above or below that keeps it from starting", async () => {
    const { d, page } = await open({}, undefined, "/locks/prod/eu/");
    await d.body("/locks/prod/start?name=all-of-prod");
    await page.locator("#headline", { hasText: "Held above or below" }).waitFor();
    expect(await page.locator("#holder").textContent()).toContain("by all-of-prod on prod keeps it from starting");
    expect(await page.locator("#start").isHidden()).toBe(true);
    await d.body("/locks/prod/stop");
    await page.click("#start");
    await page.fill("#start-name", "sion");
    await page.click("#start-dialog button.primary");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    expect((await (await d.get("/locks/prod/eu/status?format=json")).json()).release.name).toBe("sion");
  });
});

describe("the board", () => {
  for (const [width, height, name] of [
    [1200, 800, "board"],
    [360, 740, "board-phone"],
  ] as const) {
    test(`one tile per lock, grouped by the tree, with a banner when the root is blocked (${width} px)`, async () => {
      const { d, page } = await open({}, { width, height }, "/");
      await d.body("/locks/prod/eu/start?name=sion&reason=v2.3.1");
      await d.body("/locks/prod/us/start?name=bob");
      await d.body("/locks/prod/us/stop"); // holds nothing now: forgotten, so no tile
      await d.body("/locks/staging/start?name=carol");
      await d.body("/start?name=dave");
      const waiter = d.body("/locks/prod/start?name=ana&wait=30");
      await d.body("/block?name=ana&reason=holidays");
      await page.locator("#root-banner", { hasText: "Releasing everywhere blocked by ana" }).waitFor();
      await page.locator(".tile", { hasText: "ana" }).first().waitFor();
      const tiles = await page.locator(".tile .name").allTextContents();
      expect(tiles).toEqual(["default", "prod", "prod/eu", "staging"]);
      expect(await page.locator(".group").allTextContents()).toEqual(["prod"]);
      expect(await page.locator(".tile", { hasText: "prod/eu" }).textContent()).toContain("#1 by sion: v2.3.1");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect(overflow).toBeLessThanOrEqual(0);
      await shot(page, name);
      if (width === 1200) await page.screenshot({ path: join(import.meta.dir, "..", "docs", "board.png") });
      await page.click(".tile >> text=prod/eu");
      await page.locator("#headline", { hasText: "Releasing" }).waitFor();
      expect(new URL(page.url()).pathname).toBe("/locks/prod/eu/");
      await d.body("/unblock");
      await d.body("/locks/prod/eu/stop");
      expect(await waiter).toBe("1\n");
    });
  }
});

describe("the page, for a lock with a limit", () => {
  test('the board shows "2 of 3" with each holder; the lock\'s page shows the releasing state', async () => {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(file, '[[lock]]\nname = "staging/devices"\nlimit = 3\n');
    const { d, page } = await open({ RS_CONFIG: file }, undefined, "/");
    await d.body("/locks/staging/devices/start?name=ana&reason=pixel");
    await d.body("/locks/staging/devices/start?name=bob");
    const tile = page.locator(".tile", { hasText: "staging/devices" });
    await tile.locator("text=2 of 3").waitFor();
    expect(await tile.textContent()).toContain("#1 by ana: pixel");
    expect(await tile.textContent()).toContain("#2 by bob");
    expect(await tile.getAttribute("class")).toContain("running");
    await page.click(".tile >> text=staging/devices");
    await page.locator("#headline", { hasText: "Releasing: 2 of 3" }).waitFor();
  });
});

describe("the page, for a pool", () => {
  test("the board shows a pool's members, free or held, on the tile of the lock they are declared under", async () => {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(file, '[[lock]]\nname = "devices/pixel-7"\n\n[[lock]]\nname = "devices/pixel-8"\n');
    const { d, page } = await open({ RS_CONFIG: file }, undefined, "/");
    await d.body("/locks/devices/*/start?name=ana");
    const tile = page.locator(".tile", { hasText: "Pool:" });
    await tile.locator("text=pixel-7 #1 by ana").waitFor();
    expect(await tile.locator(".name").textContent()).toBe("devices");
    expect(await tile.textContent()).toContain("pixel-8 free");
  });
});

describe("the page with named tokens", () => {
  const FORBIDDEN_IN_CONSOLE = "Failed to load resource: the server responded with a status of 403 (Forbidden)";
  const sha = (token: string) => new Bun.CryptoHasher("sha256").update(token).digest("hex");
  const ANA = "ana-page-token-0123456789";
  function configWith(extra = "") {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(
      file,
      `${extra}\n[[token]]\nwho = "ana"\ncan = ["release"]\nlocks = ["prod"]\nsha256 = "${sha(ANA)}"\n`,
    );
    return { RS_CONFIG: file };
  }

  test("a token scoped to releasing on prod starts from the page, and its block is refused with the reason", async () => {
    const { d, page } = await open(configWith(), undefined, "/locks/prod/");
    await page.click("#start");
    await page.fill("#start-name", "sion");
    await page.fill("#start-reason", "v2");
    await page.click("#start-dialog button.primary");
    await page.locator("#token-dialog").waitFor();
    await page.fill("#token-input", ANA);
    await page.click("#token-dialog button.primary");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    expect(await page.locator("#holder").textContent()).toBe("Release #1 by sion, started by ana: v2");
    await page.locator("#history li", { hasText: "release #1 on prod by sion, started by ana: v2" }).waitFor();
    await page.click("#block");
    await page.fill("#block-name", "sion");
    await page.fill("#block-reason", "freeze");
    await page.click("#block-dialog button.primary");
    await page.locator("#message", { hasText: "Refused: ana may not block prod" }).waitFor();
    expect((await (await d.get("/locks/prod/status?format=json")).json()).blocked).toBe(false);
    // The browser itself logs the refused request; nothing else may be in the console.
    expect(consoleErrors.splice(0)).toEqual([FORBIDDEN_IN_CONSOLE]);
  });

  test("the board's block-all needs a token for every lock", async () => {
    const { d, page } = await open(configWith(), undefined, "/");
    await page.evaluate((t) => sessionStorage.setItem("releasestatus-token", t), ANA);
    await page.reload();
    await page.locator("#connection", { hasText: "live" }).waitFor();
    await page.click("#block-all");
    await page.fill("#block-name", "ana");
    await page.fill("#block-reason", "holidays");
    await page.click("#block-dialog button.primary");
    await page.locator("#message", { hasText: "Refused: ana may not block every lock" }).waitFor();
    expect((await (await d.get("/status?format=json")).json()).blocked).toBe(false);
    // The browser itself logs the refused request; nothing else may be in the console.
    expect(consoleErrors.splice(0)).toEqual([FORBIDDEN_IN_CONSOLE]);
  });

  test('with read = "token" the page asks for a token before it shows anything, then goes live', async () => {
    const d = await startDaemon(configWith('read = "token"'));
    daemons.push(d);
    const page = await browser.newPage();
    pages.push(page);
    page.on("pageerror", (e) => consoleErrors.push(e.message));
    await d.body("/locks/prod/start?name=sion", { headers: { Authorization: `Bearer ${ANA}` } });
    await page.goto(`${d.url}/locks/prod/`);
    await page.locator("#token-dialog").waitFor();
    expect(await page.locator("#headline", { hasText: "Releasing" }).count()).toBe(0);
    await page.fill("#token-input", ANA);
    await page.click("#token-dialog button.primary");
    await page.locator("#connection", { hasText: "live" }).waitFor();
    await page.locator("#holder", { hasText: "Release #1 by sion" }).waitFor();
    await d.body("/locks/prod/stop", { headers: { Authorization: `Bearer ${ANA}` } });
    await page.locator("#headline", { hasText: "Idle" }).waitFor();
    await page.locator("#history li", { hasText: "release #1 on prod stopped by ana" }).waitFor();
  });
});

describe("the page and the freeze calendar", () => {
  const minute = (t: number) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
  const calendar = (from: number, until: number) => {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(
      file,
      `[[freeze]]\nreason = "weekend"\nlocks = ["prod"]\nfrom = "${minute(from)}"\nuntil = "${minute(until)}"\n`,
    );
    return { RS_CONFIG: file };
  };
  const HOUR = 3_600_000;

  test("shows a banner while a freeze is in force, and no start button", async () => {
    const { page } = await open(calendar(Date.now() - HOUR, Date.now() + 2 * HOUR), undefined, "/locks/prod/");
    await page.locator("#freeze-banner", { hasText: "Releasing on prod is frozen until" }).waitFor();
    expect(await page.locator("#freeze-banner").textContent()).toContain("(weekend). A start needs an override.");
    expect(await page.locator("#start").isHidden()).toBe(true);
    await shot(page, "frozen");
  });

  test("says when a freeze begins within a day", async () => {
    const { page } = await open(calendar(Date.now() + 2 * HOUR, Date.now() + 5 * HOUR), undefined, "/locks/prod/");
    await page.locator("#freeze-soon", { hasText: /Freeze begins in (1\.9|2\.0) h \(weekend\)/ }).waitFor();
    expect(await page.locator("#freeze-banner").isHidden()).toBe(true);
    expect(await page.locator("#start").isVisible()).toBe(true);
  });

  test("the board shows a frozen lock's tile before the lock is used", async () => {
    const { page } = await open(calendar(Date.now() - HOUR, Date.now() + 2 * HOUR), undefined, "/");
    await page.locator(".tile", { hasText: "Frozen until" }).waitFor();
    expect(await page.locator(".tile .name").allTextContents()).toEqual(["prod"]);
  });
});
