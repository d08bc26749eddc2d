// Bun cuts a request that is idle for 10 s unless told otherwise: a waiter and an
// event stream are idle by nature. These take real time (12 s each), so they run
// in `make test-slow`, not in `make test`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Daemon, startDaemon, statusOf, until } from "./daemon.ts";

let d: Daemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d.stop();
});

describe("Bun's 10 s idle timeout", () => {
  test("a wait longer than Bun's 10 s idle timeout is not cut", async () => {
    const startedAt = Date.now();
    await d.body("/start?ttl=12");
    const waiter = d.get("/start?name=patient&wait=30");
    await until(async () => (await statusOf(d)).queue.length === 1, "the waiter in line");
    const res = await waiter;
    expect(await res.text()).toBe("1\n");
    expect(Date.now() - startedAt).toBeGreaterThan(10_000); // it really was idle for longer than Bun's limit
    await d.body("/stop");
  }, 30_000);

  test("a quiet /events stream is not cut by Bun's 10 s idle timeout", async () => {
    const controller = new AbortController();
    const res = await d.get("/events", { signal: controller.signal });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the snapshot
    const quietUntil = Date.now() + 12_000;
    await until(async () => Date.now() > quietUntil, "12 s of silence", 20_000);
    await d.body("/block?name=late");
    let text = "";
    while (!text.includes('"kind":"blocked"')) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the stream was cut");
      text += new TextDecoder().decode(value);
    }
    controller.abort();
    await d.body("/unblock");
  }, 30_000);
});
