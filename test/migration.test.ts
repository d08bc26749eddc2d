// A database written by the previous version (one lock, no tree) opens unchanged:
// its release, history and id counter become the default lock's, and its block,
// which blocked everything, becomes the root's. The file was made by that binary.
import { describe, expect, test } from "bun:test";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { daemonsPerTest, statusOf, tempDir } from "./daemon.ts";

const daemon = daemonsPerTest();
const FIXTURE = join(import.meta.dir, "fixtures", "v1-release-2-running-blocked.db");

describe("a database from the previous version", () => {
  test("keeps its release, its block (now the root's), its history and its id counter", async () => {
    const db = join(tempDir(), "state.db");
    copyFileSync(FIXTURE, db);
    const d = await daemon({ RS_DB: db });
    expect(d.output()).toMatch(
      /restored: release #2 by sion \(v2\.4\.0\) running since .+Z; releasing blocked by ana since .+Z: freeze/,
    );
    const status = await statusOf(d);
    expect(status.release).toMatchObject({ id: 2, name: "sion", reason: "v2.4.0" });
    expect(status.block).toMatchObject({ name: "ana", reason: "freeze" });
    const { events } = await (await d.get("/history?format=json")).json();
    expect(events.map((e: { kind: string }) => e.kind)).toEqual(["blocked", "started", "stopped", "started"]);
    expect(await d.body("/stop")).toBe("1\n");
    expect(await d.body("/start")).toBe("0\n"); // the old block blocks everything still
    expect(await d.body("/unblock?name=ana")).toBe("1\n");
    const next = await d.get("/start?name=bob");
    expect(next.headers.get("x-release-id")).toBe("3");
  });
});
