// GET /events: Server-Sent Events for the page and for `curl -N`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Daemon, startDaemon } from "./daemon.ts";

let d: Daemon;
beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d.stop();
});

/** Reads an event stream and hands over each event as it comes. */
async function* readEvents(res: Response) {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = /^event: (.+)$/m.exec(frame)?.[1];
      const data = /^data: (.+)$/m.exec(frame)?.[1];
      if (event && data) yield { event, data: JSON.parse(data) };
      end = buffer.indexOf("\n\n");
    }
  }
}

describe("/events", () => {
  test("sends a status snapshot on connect, then one event per change", async () => {
    await d.body("/block?name=ana&reason=freeze");
    const controller = new AbortController();
    const res = await d.get("/events", { signal: controller.signal });
    expect(res.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    const events = readEvents(res);
    const snapshot = (await events.next()).value;
    expect(snapshot?.event).toBe("status");
    expect(snapshot?.data.status).toMatchObject({ running: false, blocked: true, block: { name: "ana" } });

    await d.body("/unblock?name=ana");
    await d.body("/start?name=sion&reason=v2");
    const unblocked = (await events.next()).value;
    expect(unblocked?.event).toBe("change");
    expect(unblocked?.data.events).toMatchObject([{ kind: "unblocked", name: "ana" }]);
    const started = (await events.next()).value;
    expect(started?.data.events).toMatchObject([{ kind: "started", name: "sion", reason: "v2", releaseId: 1 }]);
    expect(started?.data.status.release).toMatchObject({ id: 1, name: "sion" });
    controller.abort();
    await d.body("/stop");
  });

  test("an open stream does not hold up shutdown", async () => {
    const s = await startDaemon();
    const controller = new AbortController();
    const events = readEvents(await s.get("/events", { signal: controller.signal }));
    await events.next();
    expect(await s.stop("SIGTERM")).toBe(0);
    expect((await events.next()).done).toBe(true);
  });
});
