// Start-up loads only what the configuration uses (issue 28), as the binary's own step-by-step
// trace says (RS_TEST_STARTUP=1): the SQLite store's code only for an RS_DB file.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { daemonsPerTest, tempDir } from "./daemon.ts";

const daemon = daemonsPerTest();
const steps = (output: string) => [...output.matchAll(/^startup: [\d.]+ ms (.+)$/gm)].map((m) => m[1]);

describe("start-up loads the SQLite store only for an RS_DB file", () => {
  test("RS_DB=:memory: starts and answers without loading the SQLite store", async () => {
    const d = await daemon({ RS_DB: ":memory:", RS_TEST_STARTUP: "1" });
    expect(await d.body("/start?name=sion")).toBe("1\n");
    expect(steps(d.output())).toContain("listening");
    expect(steps(d.output())).not.toContain("SQLite store loaded");
  });

  test("an RS_DB file loads the SQLite store before the store is opened", async () => {
    const d = await daemon({ RS_DB: join(tempDir(), "state.db"), RS_TEST_STARTUP: "1" });
    expect(await d.body("/start?name=sion")).toBe("1\n");
    const seen = steps(d.output());
    expect(seen.indexOf("SQLite store loaded")).toBeGreaterThan(-1);
    expect(seen.indexOf("SQLite store loaded")).toBeLessThan(seen.findIndex((s) => s?.startsWith("store opened")));
  });
});
