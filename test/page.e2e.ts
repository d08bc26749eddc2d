// The page, in real headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no browser is downloaded). Runs in `make test-browser`.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { type Daemon, freePort, startDaemon, tempDir, until } from "./daemon.ts";

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
// The README's pictures (docs/*.png) are taken anew by every run of this suite, from the page as it is.
const docShot = (page: Page, name: string, fullPage = false) =>
  page.screenshot({ path: join(import.meta.dir, "..", "docs", name), fullPage });
const shot = (page: Page, name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

describe("the page", () => {
  test("shows idle when nothing runs", async () => {
    const { page } = await open();
    expect(await headline(page)).toBe("✓ Free");
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
    await page.locator("#headline", { hasText: "Free" }).waitFor();
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
    await page.locator("#headline", { hasText: "Free" }).waitFor();
  });

  test("the stop button stops the release the page shows", async () => {
    const { d, page } = await open();
    await d.body("/start?name=sion");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    await page.click("#stop");
    // It asks first, naming whose release it is: one click must not end someone else's deploy.
    expect(await page.locator("#stop-whose").textContent()).toContain("Release #1 by sion will end now");
    await page.fill("#stop-name", "ana"); // the history says who stopped it
    await page.click("#stop-dialog button.primary");
    await page.locator("#headline", { hasText: "Free" }).waitFor();
    expect((await (await d.get("/history?format=json")).json()).events[0]).toMatchObject({
      kind: "stopped",
      releaseId: 1,
      name: "ana",
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
    await page.locator("#headline", { hasText: "Free" }).waitFor();
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
    expect(await page.locator("#state").getAttribute("data-state")).toBe("releasing");
    expect(await page.locator("#block-info").getAttribute("data-state")).toBe("blocked");
  });

  test("a free lock that a waiter of an overlapping claim stands ahead of says so, and offers no start", async () => {
    const { d, page } = await open({}, undefined, "/locks/prod/us/");
    await d.body("/locks/prod/eu/start?name=sion");
    const ana = d.body("/locks/prod/start?name=ana&wait=30"); // waits for prod/eu, ahead of any start on prod/us
    await page.locator("#headline", { hasText: "Waiters ahead" }).waitFor();
    expect(await page.locator("#state").getAttribute("data-state")).toBe("queued");
    expect(await page.locator("#holder").textContent()).toContain(
      "1 waiting ahead of a start on prod/us: ana for prod",
    );
    expect(await page.locator("#start").isHidden()).toBe(true);
    await d.body("/locks/prod/eu/stop");
    expect(await ana).toBe("1\n");
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
      const prodEu = page.locator(".tile").filter({ has: page.locator(".name", { hasText: /^prod\/eu$/ }) });
      expect(await prodEu.textContent()).toContain("#1 by sion: v2.3.1");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      expect(overflow).toBeLessThanOrEqual(0);
      await shot(page, name);
      await page.locator(".tile .name", { hasText: /^prod\/eu$/ }).click();
      await page.locator("#headline", { hasText: "Releasing" }).waitFor();
      expect(new URL(page.url()).pathname).toBe("/locks/prod/eu/");
      await d.body("/unblock");
      await d.body("/locks/prod/eu/stop");
      expect(await waiter).toBe("1\n");
    });
  }
});

describe("the board shows every lock a start may be asked of, and only those", () => {
  test("with RS_LOCKS leaving default out, no default tile; a group held from below is a held tile naming the lock below", async () => {
    const db = join(tempDir(), "releasestatus.db"); // SQLite keeps the default lock's row
    const { d, page } = await open({ RS_DB: db, RS_LOCKS: "prod,prod/eu,staging" }, { width: 1200, height: 800 }, "/");
    await d.body("/locks/prod/eu/start?name=sion");
    const prod = page.locator(".tile").filter({ has: page.locator(".name", { hasText: /^prod$/ }) });
    await prod.locator(".what", { hasText: "prod/eu" }).waitFor();
    expect(await prod.getAttribute("data-state")).toBe("held");
    expect(await page.locator(".tile .name").allTextContents()).toEqual(["prod", "prod/eu", "staging"]);
  });
});

describe("the page, for a lock with a limit", () => {
  test('the board shows "2 of 3" with each holder; the lock\'s page shows the releasing state', async () => {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(file, '[[lock]]\nname = "staging/devices"\nlimit = 3\n');
    const { d, page } = await open({ RS_CONFIG: file }, undefined, "/");
    await d.body("/locks/staging/devices/start?name=ana&reason=pixel");
    await d.body("/locks/staging/devices/start?name=bob");
    // By its name: the tile of staging, held from below, names staging/devices too.
    const tile = page.locator(".tile").filter({ has: page.locator(".name", { hasText: /^staging\/devices$/ }) });
    await tile.locator("text=2 of 3").waitFor();
    expect(await tile.textContent()).toContain("#1 by ana: pixel");
    expect(await tile.textContent()).toContain("#2 by bob");
    expect(await tile.getAttribute("data-state")).toBe("releasing");
    await page.locator(".tile .name", { hasText: /^staging\/devices$/ }).click();
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
  const OPS = "ops-page-token-0123456789";
  function configWith(extra = "") {
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(
      file,
      `${extra}\n[[token]]\nwho = "ana"\ncan = ["release"]\nlocks = ["prod"]\nsha256 = "${sha(ANA)}"\n` +
        `\n[[token]]\nwho = "ops"\ncan = ["release", "block"]\nlocks = ["*"]\nsha256 = "${sha(OPS)}"\n`,
    );
    return { RS_CONFIG: file };
  }

  test("a token scoped to releasing on prod starts from the page, which then offers only the buttons the token may use", async () => {
    const { d, page } = await open(configWith(), undefined, "/locks/prod/");
    expect(await page.locator("#block").isVisible()).toBe(true); // no token yet: every button, and it asks
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
    await page.locator("#block").waitFor({ state: "hidden" }); // ana may release, not block
    expect(await page.locator("#stop").isVisible()).toBe(true);
    // A block from the root that ana may not lift: no unblock button, only the block's words.
    await d.body("/block?name=ops&reason=holidays", { headers: { Authorization: `Bearer ${OPS}` } });
    await page.locator("#block-info", { hasText: "Releasing everywhere blocked by ops" }).waitFor();
    expect(await page.locator("#unblock-above").isHidden()).toBe(true);
  });

  test("the board's block-all needs a token for every lock", async () => {
    const { d, page } = await open(configWith(), undefined, "/");
    // A lock besides the original's is in use, so "/" is the board.
    await d.body("/locks/prod/start?name=sion", { headers: { Authorization: `Bearer ${ANA}` } });
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
    await page.locator("#headline", { hasText: "Free" }).waitFor();
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
    await page.locator('.tile[data-state="frozen"]', { hasText: "(weekend)" }).waitFor();
    expect(await page.locator(".tile .name").allTextContents()).toEqual(["prod"]);
  });
});

// ---- one colour, one symbol, one word per state; nothing cut off; the daemon down; one time zone ----

const HOUR_MS = 3_600_000;
const utcMinute = (t: number) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
const freeze = (reason: string, lock: string, from: number, until: number) =>
  `[[freeze]]\nreason = "${reason}"\nlocks = ["${lock}"]\nfrom = "${utcMinute(from)}"\nuntil = "${utcMinute(until)}"\n`;
const LONG_REASON = `rolling back the ${"very-long-unbroken-".repeat(6)}migration, and then a sentence with spaces that goes on`;

/** A daemon with one lock in each state, named after it; long names and reasons, as teams write them. */
async function everyState(viewport: { width: number; height: number }, path = "/") {
  const now = Date.now();
  const file = join(tempDir(), "releasestatus.toml");
  writeFileSync(
    file,
    freeze(LONG_REASON, "frozen", now - HOUR_MS, now + 2 * HOUR_MS) +
      freeze("audit", "coming", now + 2 * HOUR_MS, now + 5 * HOUR_MS) +
      freeze("next month", "free", now + 30 * 24 * HOUR_MS, now + 31 * 24 * HOUR_MS),
  );
  const opened = await open({ RS_CONFIG: file }, viewport, path);
  const { d } = opened;
  await d.body(
    `/locks/releasing/start?name=${"sion-with-a-long-name-".repeat(3)}&reason=${encodeURIComponent(LONG_REASON)}`,
  );
  await d.body("/locks/held/below/start?name=bob");
  // Held from below, and listed: someone waits for it (until the daemon is stopped after the test).
  d.body("/locks/held/start?name=carol&wait=60").catch(() => {});
  await until(
    async () => (await (await d.get("/locks/held/status?format=json")).json()).queue.length === 1,
    "carol in line",
  );
  await d.body(`/locks/blocked/block?name=ana&reason=${encodeURIComponent(LONG_REASON)}`);
  return opened;
}
const EVERY_STATE = {
  free: { symbol: "✓", word: "Free" },
  releasing: { symbol: "▶", word: "Releasing" },
  held: { symbol: "⇅", word: "Held above or below" },
  blocked: { symbol: "■", word: "Blocked" },
  frozen: { symbol: "❄", word: "Frozen" },
  coming: { symbol: "◷", word: "Freeze coming" },
} as const;

/** The mark (symbol, word, colour) inside `root`, and the contrast of its colour on the background behind it. */
const markOf = (page: Page, root: string) =>
  page.evaluate((selector) => {
    const el = document.querySelector(selector) as HTMLElement;
    const mark = el.querySelector(".mark") as HTMLElement;
    const rgb = (c: string) => (c.match(/\d+(\.\d+)?/g) ?? []).slice(0, 3).map(Number);
    const lum = (c: string) => {
      const [r, g, b] = rgb(c).map((v) => {
        const x = v / 255;
        return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * (r ?? 0) + 0.7152 * (g ?? 0) + 0.0722 * (b ?? 0);
    };
    const colour = getComputedStyle(mark).color;
    const background = getComputedStyle(el).backgroundColor;
    const [hi, lo] = [lum(colour), lum(background)].sort((a, b) => b - a) as [number, number];
    return {
      state: el.dataset.state,
      symbol: mark.querySelector(".sym")?.textContent,
      word: mark.querySelector(".word")?.textContent,
      colour,
      border: getComputedStyle(el).borderTopColor,
      contrast: (hi + 0.05) / (lo + 0.05),
      // A link that says so: the pointer, and the arrow after its name.
      looksClickable:
        el.tagName !== "A" ||
        (getComputedStyle(el).cursor === "pointer" &&
          getComputedStyle(el.querySelector(".name") as Element, "::after").content === '"›"'),
    };
  }, root);

/** Elements whose text does not fit where it is shown: wider than the page, or clipped by their box. */
const cutOff = (page: Page) =>
  page.evaluate(() => {
    const cut: string[] = [];
    if (document.documentElement.scrollWidth > window.innerWidth) cut.push("the page scrolls sideways");
    for (const el of document.querySelectorAll<HTMLElement>("main *")) {
      if (!el.offsetParent) continue; // not shown
      const style = getComputedStyle(el);
      const clips =
        style.overflow !== "visible" || style.textOverflow === "ellipsis" || style.webkitLineClamp !== "none";
      if (clips && (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1))
        cut.push(el.outerHTML.slice(0, 80));
      if (el.getBoundingClientRect().right > window.innerWidth + 1)
        cut.push(`past the edge: ${el.outerHTML.slice(0, 80)}`);
    }
    return cut;
  });

describe("each state has one colour, one symbol and one word, the same on the board and on the lock's page", () => {
  for (const [width, height, scheme] of [
    [1200, 900, "light"],
    [360, 740, "dark"],
  ] as const)
    test(`every state, readable without colour and at 4.5:1, nothing cut off (${width} px, ${scheme})`, async () => {
      const { d, page } = await everyState({ width, height });
      await page.emulateMedia({ colorScheme: scheme });
      for (const state of Object.keys(EVERY_STATE))
        await page.locator(`.tile[data-state="${state}"]`, { hasText: state }).first().waitFor();
      const onBoard: Record<string, Awaited<ReturnType<typeof markOf>>> = {};
      for (const [state, { symbol, word }] of Object.entries(EVERY_STATE)) {
        const tile = await markOf(page, `.tile[data-state="${state}"]`);
        expect({ state, symbol: tile.symbol, word: tile.word?.startsWith(word) }).toEqual({
          state,
          symbol,
          word: true,
        });
        expect(tile.border).toBe(tile.colour); // the tile's frame is the state's colour
        expect(tile.looksClickable).toBe(true);
        expect(tile.contrast).toBeGreaterThanOrEqual(4.5);
        onBoard[state] = tile;
      }
      // Each colour is its state's alone.
      expect(new Set(Object.values(onBoard).map((m) => m.colour)).size).toBe(Object.keys(EVERY_STATE).length);
      expect(await cutOff(page)).toEqual([]);
      if (width === 1200) await docShot(page, "board.png", true);
      await shot(page, `states-board-${width}`);
      for (const [state, { symbol, word }] of Object.entries(EVERY_STATE)) {
        await page.goto(`${d.url}/locks/${state}/`);
        await page.locator(`#state[data-state="${state}"]`).waitFor();
        const own = await markOf(page, "#state");
        expect({ state, symbol: own.symbol, word: own.word?.startsWith(word) }).toEqual({ state, symbol, word: true });
        expect(own.colour).toBe(onBoard[state]?.colour ?? "");
        expect(own.contrast).toBeGreaterThanOrEqual(4.5);
        expect(await cutOff(page)).toEqual([]);
        await shot(page, `states-${state}-${width}`);
      }
    }, 60_000);

  test("a lock that is releasing and blocked and frozen shows each, each with its own mark", async () => {
    const { d, page } = await everyState({ width: 1200, height: 900 }, "/locks/frozen/");
    await d.body("/locks/frozen/start?name=sion&override=hotfix");
    await d.body("/block?name=ana&reason=holidays");
    await page.locator('#state[data-state="releasing"]').waitFor();
    expect(await page.locator("#block-info").getAttribute("data-state")).toBe("blocked");
    expect(await page.locator("#block-info .sym").textContent()).toBe("■");
    expect(await page.locator("#freeze-banner .sym").textContent()).toBe("❄");
    await page.goto(`${d.url}/`);
    const tile = page.locator('.tile[data-state="releasing"]', { hasText: "frozen" });
    await tile.locator('.badge[data-state="blocked"]').waitFor();
    await tile.locator('.badge[data-state="frozen"]').waitFor();
  });
});

describe("the page says when the daemon cannot be reached", () => {
  test("after a real stop: it takes over the page, counts up how long, fades what was last known, offers no button", async () => {
    const { d, page } = await open();
    await d.body("/start?name=sion");
    await page.locator("#headline", { hasText: "Releasing" }).waitFor();
    await d.stop();
    const down = page.locator("#down-for");
    await down.filter({ hasText: /^releasestatus unreachable for \d+ s$/ }).waitFor();
    const first = await down.textContent();
    await page.waitForFunction((before) => document.querySelector("#down-for")?.textContent !== before, first);
    expect(await page.locator("#down-note").textContent()).toMatch(/last known, at \d\d:\d\d/);
    const content = await page.evaluate(() => {
      const style = getComputedStyle(document.querySelector("#content") as HTMLElement);
      return { opacity: Number(style.opacity), filter: style.filter };
    });
    expect(content.opacity).toBeLessThan(0.5);
    expect(content.filter).toContain("grayscale");
    for (const button of ["#start", "#stop", "#block", "#unblock", "#unblock-above"])
      expect(await page.locator(button).isHidden()).toBe(true);
    await docShot(page, "down.png");
    consoleErrors.splice(0); // the browser logs the refused connections
  });

  test('says minutes and seconds once it has been down a while: "1 min 10 s"', async () => {
    const d = await startDaemon();
    daemons.push(d);
    const page = await browser.newPage();
    pages.push(page);
    await page.clock.install();
    await page.goto(`${d.url}/locks/default/`);
    await page.locator("#connection", { hasText: "live" }).waitFor();
    await d.stop();
    await page.locator("#down-for", { hasText: /unreachable for \d+ s$/ }).waitFor();
    await page.clock.fastForward(70_000);
    await page.locator("#down-for", { hasText: /^releasestatus unreachable for 1 min 1\d s$/ }).waitFor();
    consoleErrors.splice(0);
  });
});

describe("one time zone per page, said on the page", () => {
  test("release times and freeze times are both in the browser's zone, which the page names", async () => {
    const now = Date.now();
    const file = join(tempDir(), "releasestatus.toml");
    writeFileSync(file, freeze("weekend", "prod", now - HOUR_MS, now + 2 * HOUR_MS));
    const { d, page } = await open({ RS_CONFIG: file }, undefined, "/locks/prod/");
    await page.close();
    const tokyo = await browser.newPage({ timezoneId: "Asia/Tokyo" });
    pages.push(tokyo);
    await tokyo.goto(`${d.url}/locks/prod/`);
    await tokyo.locator("#freeze-banner", { hasText: "frozen until" }).waitFor();
    expect(await tokyo.locator("#zone").textContent()).toBe("Times in Asia/Tokyo");
    const { freeze: f } = await (await d.get("/locks/prod/status?format=json")).json();
    const inTokyo = new Date(f.until).toLocaleTimeString("en-GB", {
      timeZone: "Asia/Tokyo",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
    });
    const banner = (await tokyo.locator("#freeze-banner").textContent()) ?? "";
    expect(banner).toContain(` ${inTokyo} (weekend)`);
    expect(banner).not.toContain("UTC");
  });
});

describe("every button the state allows", () => {
  test("a lock blocked from the root offers to unblock every lock, and its history shows the block", async () => {
    const { d, page } = await open({}, undefined, "/locks/prod/eu/");
    await d.body("/block?name=ana&reason=holidays");
    await page.locator("#unblock-above", { hasText: "Unblock all releases" }).waitFor();
    expect(await page.locator("#unblock").isHidden()).toBe(true);
    await page.locator("#history li", { hasText: "releasing blocked by ana: holidays" }).waitFor();
    await page.reload(); // and when the history is read anew, not only heard live
    await page.locator("#history li", { hasText: "releasing blocked by ana: holidays" }).waitFor();
    await page.click("#unblock-above");
    await page.locator("#headline", { hasText: "Free" }).waitFor();
    expect((await (await d.get("/status?format=json")).json()).blocked).toBe(false);
  });

  test("a lock blocked from the lock above offers to unblock that lock", async () => {
    const { d, page } = await open({}, undefined, "/locks/prod/eu/");
    await d.body("/locks/prod/block?name=ana");
    await page.locator("#unblock-above", { hasText: "Unblock prod" }).waitFor();
    await page.click("#unblock-above");
    await page.locator("#headline", { hasText: "Free" }).waitFor();
  });
});

describe("with the original's lock the only one, / is that lock's page", () => {
  test("/ shows the default lock's page until another lock is used, then the board", async () => {
    const { d, page } = await open({}, undefined, "/");
    await page.locator("#headline", { hasText: "Free" }).waitFor();
    expect(await page.locator("#board").isHidden()).toBe(true);
    await d.body("/start?name=sion");
    await d.body("/stop?name=sion"); // a completed release: an estimate
    await d.body("/start?name=sion&reason=v2.3.1");
    const waiter = d.body("/start?name=ana&reason=hotfix&wait=30");
    await page.locator("#queue li", { hasText: "ana (hotfix)" }).waitFor();
    await page.locator("#timing", { hasText: "Usually takes" }).waitFor();
    await docShot(page, "page.png");
    await d.body("/stop?name=sion");
    expect(await waiter).toBe("1\n");
    await d.body("/locks/staging/start?name=bob");
    await page.locator('.tile[data-state="releasing"]', { hasText: "staging" }).waitFor();
    expect(await page.locator("#one").isHidden()).toBe(true);
  });
});
