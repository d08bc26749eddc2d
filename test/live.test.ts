// GET /events: Server-Sent Events for the page and for `curl -N`.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Daemon, daemonsPerTest, startDaemon, until } from "./daemon.ts";

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

const daemon = daemonsPerTest();
const LONG = "x".repeat(200); // the longest name and reason: big frames fill a socket sooner

/**
 * A client that asks for /events over a raw socket, reads the status line of the answer, and then reads
 * nothing until told to: the socket's buffers fill up, and then what the daemon has not sent yet. Told to
 * read, it reads until the daemon's end of the stream (a close or a reset), and exits.
 */
function silentClient(port: number) {
  const request = "GET /events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n";
  const proc = Bun.spawn(
    [
      "bash",
      "-c",
      `exec 3<>/dev/tcp/127.0.0.1/${port}; printf '${request}' >&3; read -r status <&3; echo "$status"; read _; cat <&3 >/dev/null`,
    ],
    { stdin: "pipe", stdout: "pipe", stderr: "ignore" },
  );
  return {
    proc,
    /** The answer's status line, once the stream is open. */
    answered: async () => {
      let text = "";
      for await (const chunk of proc.stdout) {
        text += new TextDecoder().decode(chunk);
        if (text.includes("\n")) break;
      }
      return text.trim();
    },
    readToEnd: () => {
      proc.stdin.write("read\n");
      proc.stdin.end();
    },
  };
}

/** Whether a new stream is accepted now; one that is, is closed again at once. */
async function streamAccepted(d: Daemon): Promise<boolean> {
  const controller = new AbortController();
  const res = await d.get("/events", { signal: controller.signal });
  controller.abort();
  return res.status === 200;
}

describe("/events: a client that does not read", () => {
  test("is cut off once its unsent events pass the bound, and sees the end of its stream when it reads", async () => {
    const d = await daemon({ RS_MAX_STREAMS: "1" }); // the one stream's place frees when it is cut
    const silent = silentClient(d.port);
    try {
      expect(await silent.answered()).toBe("HTTP/1.1 200 OK");
      expect(await streamAccepted(d)).toBe(false);
      // Changes until the daemon lets the stream go (its place is free again): more than socket buffers hold, but bounded.
      let cut = false;
      for (let batch = 0; batch < 100 && !cut; batch++) {
        for (let i = 0; i < 100; i++) {
          await d.body(`/block?name=${LONG}&reason=${LONG}`);
          await d.body("/unblock");
        }
        cut = await streamAccepted(d);
      }
      expect(cut).toBe(true);
      silent.readToEnd();
      await until(async () => silent.proc.exitCode !== null, "the silent client to read to the end of its stream");
    } finally {
      silent.proc.kill();
    }
  });
});

describe("/events: RS_MAX_STREAMS", () => {
  test("beyond it a new stream is refused 503 too-many-streams, saying why; once one closes, one more is accepted", async () => {
    const d = await daemon({ RS_MAX_STREAMS: "2" });
    const open = [new AbortController(), new AbortController()];
    for (const controller of open) await readEvents(await d.get("/events", { signal: controller.signal })).next();
    const refused = await d.get("/events");
    expect(refused.status).toBe(503);
    expect(await refused.text()).toBe("0\n");
    expect(refused.headers.get("x-reason-code")).toBe("too-many-streams");
    expect(refused.headers.get("x-reason")).toContain("2 event streams are open, as many as RS_MAX_STREAMS allows");
    open[0]?.abort();
    await until(() => streamAccepted(d), "a new stream to be accepted once one closed");
    open[1]?.abort();
  });
});

describe("/events of a lock held with others", () => {
  test("a stream on any lock of a release of several locks hears its events, naming them all", async () => {
    const controller = new AbortController();
    const events = readEvents(await d.get("/locks/shared-db/events", { signal: controller.signal }));
    await events.next(); // the snapshot
    expect(await d.body("/start?lock=prod/eu&lock=shared-db&name=ana")).toBe("1\n");
    const started = (await events.next()).value;
    expect(started?.data.events).toMatchObject([{ kind: "started", lock: "prod/eu", locks: ["prod/eu", "shared-db"] }]);
    expect(started?.data.status.releases).toHaveLength(1);
    controller.abort();
  });
});
