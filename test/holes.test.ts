// Each way a hostile or careless client once got past the HTTP layer, against
// the compiled binary: a fence bypassed by an empty id or a body of another
// type, a second daemon on the port, dot segments, raw invalid UTF-8 and
// direction overrides, a rebinding host name.

import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { type Daemon, daemonsPerTest, runBinary, statusOf, tempDir, until } from "./daemon.ts";

const daemon = daemonsPerTest();

/** Sends bytes exactly as given (no normalising client in the way) and returns the status line and body. */
async function raw(d: Daemon, request: Uint8Array | string): Promise<{ status: number; body: string }> {
  const text = await new Promise<string>((resolve) => {
    let out = "";
    Bun.connect({
      hostname: "127.0.0.1",
      port: d.port,
      socket: {
        open: (s) => void s.write(request),
        data: (_s, chunk) => {
          out += chunk.toString();
        },
        close: () => resolve(out),
        error: () => resolve(out),
      },
    });
  });
  return { status: Number(text.split(" ")[1]), body: text.split("\r\n\r\n")[1] ?? "" };
}
const get = (target: string) => `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`;

describe("the fence cannot be bypassed", () => {
  for (const [what, path, init] of [
    ["an empty id", "/stop?id=", {}],
    ["an id without a value", "/stop?id", {}],
    ["an empty ttl", "/renew?id=1&ttl=", {}],
    ["an empty wait", "/start?wait=", {}],
  ] as const) {
    test(`${what} is invalid and changes nothing`, async () => {
      const d = await daemon();
      await d.body("/start?name=holder");
      const res = await d.get(path, init);
      expect(res.status).toBe(400);
      expect(res.headers.get("x-reason-code")).toBe("invalid");
      expect(await res.text()).toBe("0\n");
      expect((await statusOf(d)).release.name).toBe("holder");
    });
  }

  for (const [what, type, body] of [
    [
      "multipart",
      "multipart/form-data; boundary=x",
      '--x\r\nContent-Disposition: form-data; name="id"\r\n\r\n1\r\n--x--\r\n',
    ],
    ["JSON", "application/json", '{"id": 1}'],
    ["plain text", "text/plain", "id=1"],
  ] as const) {
    test(`a ${what} body is refused with 415 and changes nothing`, async () => {
      const d = await daemon();
      await d.body("/start?name=holder");
      const res = await d.get("/stop", { method: "POST", headers: { "Content-Type": type }, body });
      expect(res.status).toBe(415);
      expect(res.headers.get("x-reason-code")).toBe("unsupported-media-type");
      expect(await res.text()).toBe("0\n");
      expect((await statusOf(d)).running).toBe(true);
    });
  }

  test("a form body is read whatever the case of its media type", async () => {
    const d = await daemon();
    const id = (await d.get("/start?name=holder")).headers.get("x-release-id");
    const wrong = await d.get("/stop", {
      method: "POST",
      headers: { "Content-Type": "Application/X-WWW-Form-URLEncoded; Charset=UTF-8" },
      body: `id=${Number(id) + 1}`,
    });
    expect(wrong.headers.get("x-reason-code")).toBe("wrong-id");
    expect((await statusOf(d)).running).toBe(true);
  });
});

describe("a body is a form or it is refused, whatever the headers say or omit", () => {
  const form = "Content-Type: application/x-www-form-urlencoded\r\n";
  const post = (path: string, headers: string, body: string) =>
    `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${headers}\r\n${body}`;
  for (const [what, request] of [
    ["without a Content-Type", post("/stop", "Content-Length: 4\r\n", "id=1")],
    ["with an empty Content-Type", post("/stop", "Content-Type:\r\nContent-Length: 4\r\n", "id=1")],
    ["chunked, without a Content-Type", post("/stop", "Transfer-Encoding: chunked\r\n", "4\r\nid=1\r\n0\r\n\r\n")],
    [
      "declared a form but compressed (Content-Encoding: gzip)",
      Buffer.concat([
        Buffer.from(
          post("/stop", `${form}Content-Encoding: gzip\r\nContent-Length: ${Bun.gzipSync("id=1").length}\r\n`, ""),
        ),
        Bun.gzipSync("id=1"),
      ]),
    ],
    [
      "declared a form in UTF-16",
      post(
        "/stop",
        "Content-Type: application/x-www-form-urlencoded; charset=utf-16le\r\nContent-Length: 8\r\n",
        "i\0d\0=\x001\0",
      ),
    ],
  ] as const) {
    test(`a POST body ${what} is 415 and changes nothing`, async () => {
      const d = await daemon();
      await d.body("/start?name=holder");
      await d.body("/stop");
      await d.body("/start?name=other"); // release #2: id=1 would be the wrong id, no id stops it
      const { status, body } = await raw(d, request);
      expect({ status, body }).toEqual({ status: 415, body: "0\n" });
      expect((await statusOf(d)).release.name).toBe("other");
    });
  }

  test("a parameter given twice, or both in the query string and the body, is 400 and changes nothing", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    await d.body("/stop");
    await d.body("/start?name=other"); // release #2
    for (const request of [
      post("/stop?id=2", `${form}Content-Length: 4\r\n`, "id=1"),
      post("/stop?id=1&id=2", "", ""),
      post("/locks/x/start?name=a&ttl=100&ttl=5", "", ""),
    ]) {
      const { status, body } = await raw(d, request);
      expect({ status, body }).toEqual({ status: 400, body: "0\n" });
    }
    expect((await statusOf(d)).release.name).toBe("other");
    expect((await d.get("/locks/x/status?format=json").then((r) => r.json())).running).toBe(false);
  });

  test("a parameter a change does not take is 400 and changes nothing: /stop?idd=1 ends nothing, /block?lock=x blocks nothing", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    for (const path of ["/stop?idd=1", "/block?lock=x&name=ana", "/locks/x/unblock?reason=typo"]) {
      const res = await d.get(path);
      expect({ path, status: res.status, body: await res.text() }).toEqual({ path, status: 400, body: "0\n" });
      expect(res.headers.get("x-reason")).toContain("is not a parameter of");
    }
    expect((await statusOf(d)).release.name).toBe("holder");
    expect((await statusOf(d)).blocked).toBe(false);
  });

  test("a GET with a body is 400: the body cannot be read, so it is not ignored either", async () => {
    const d = await daemon();
    await d.body("/start?name=holder");
    for (const headers of ["Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n"]) {
      const body = headers.startsWith("Transfer") ? "4\r\nid=9\r\n0\r\n\r\n" : "id=9";
      const request = `GET /stop HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${headers}\r\n${body}`;
      expect(await raw(d, request)).toEqual({ status: 400, body: "0\n" });
    }
    expect((await statusOf(d)).release.name).toBe("holder");
  });

  test("a form body declared and cut short grants nothing and is no internal error", async () => {
    const d = await daemon();
    const socket = await Bun.connect({ hostname: "127.0.0.1", port: d.port, socket: { data() {} } });
    socket.write(post("/start", `${form}Content-Length: 40\r\n`, "name=cut"));
    socket.end(); // 8 bytes of the 40 declared
    await until(async () => /cut short|internal error/.test(d.output()), "the cut-short body to be answered");
    expect(d.output()).not.toContain("internal error");
    expect((await statusOf(d)).running).toBe(false);
  });

  test("a POST without a body acts on its query string, whatever Content-Type it names", async () => {
    const d = await daemon();
    const { status, body } = await raw(d, post("/start?name=q", "Content-Type:\r\n", ""));
    expect({ status, body }).toEqual({ status: 200, body: "1\n" });
    expect((await statusOf(d)).release.name).toBe("q");
  });
});

describe("a /start whose answer cannot be delivered starts nothing", () => {
  const start = (lock: string, end = "") =>
    `GET /locks/${lock}/start?name=ana HTTP/1.1\r\nHost: 127.0.0.1\r\n${end}\r\n`;
  const refusedInLog = (d: Daemon, lock: string) =>
    until(
      async () => d.output().includes(`refused start on ${lock}: the client went away`),
      `the start on ${lock} refused`,
    );
  const eventsOn = async (d: Daemon, lock: string) =>
    (await (await d.get(`/locks/${lock}/history?format=json`)).json()).events;

  test("pipelined behind another request (Bun closes such a connection): nothing is started, not started and abandoned", async () => {
    const d = await daemon();
    await raw(d, `${start("piped")}GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    await refusedInLog(d, "piped");
    expect(await eventsOn(d, "piped")).toEqual([]);
  });

  test("sent half-closed (nc -N): nothing is started", async () => {
    const d = await daemon();
    // Paused, so that the request and its end are both waiting when the daemon reads them: a client's
    // end that comes later than the request is not "already closed", and may be granted.
    d.proc.kill("SIGSTOP");
    const socket = connect(d.port, "127.0.0.1");
    socket.on("error", () => {});
    await new Promise<void>((sent) => socket.on("connect", () => socket.end(start("half"), sent)));
    d.proc.kill("SIGCONT");
    await refusedInLog(d, "half");
    expect(await eventsOn(d, "half")).toEqual([]);
    socket.destroy();
  });

  test("pipelined requests that are answered at once are all answered, in order", async () => {
    const d = await daemon();
    const get = (path: string, end = "") => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${end}\r\n`;
    const sent = await new Promise<string>((resolve) => {
      let out = "";
      const socket = connect(d.port, "127.0.0.1", () =>
        socket.write(get("/healthz") + get("/status") + get("/healthz", "Connection: close\r\n")),
      );
      socket.on("data", (c) => (out += c));
      socket.on("close", () => resolve(out));
    });
    expect(
      sent
        .split("\r\n\r\n")
        .slice(1)
        .map((b) => b.split("HTTP/1.1")[0]),
    ).toEqual(["ok\n", "idle: no release is running\n", "ok\n"]);
  });
});

describe("one daemon per port", () => {
  test("a second daemon on the same port exits 2 saying the port is in use, and the first keeps answering", async () => {
    const d = await daemon();
    const second = await runBinary([], { RS_PORT: String(d.port), RS_HOST: "127.0.0.1", RS_DB: ":memory:" });
    expect(second.code).toBe(2);
    expect(second.stderr).toContain(`port ${d.port} is already in use`);
    for (let i = 0; i < 6; i++) expect(await d.body(`/start?name=n${i}`)).toBe(i === 0 ? "1\n" : "0\n");
  });
});

describe("paths are what they say", () => {
  test("dot segments are not a way to an endpoint: 404, not 405", async () => {
    const d = await daemon();
    for (const target of ["/./start", "/a/../start", "/locks/../start", "/a/../locks/prod/start"]) {
      const { status } = await raw(d, get(target));
      expect(status).toBe(404);
    }
    expect((await statusOf(d)).running).toBe(false);
  });

  test("a trailing slash after an action is 404, not the page of a lock named after the action", async () => {
    const d = await daemon();
    for (const target of ["/locks/prod/start/", "/locks/prod/eu/status/"]) {
      const res = await d.get(target);
      expect({ target, status: res.status, code: res.headers.get("x-reason-code") }).toEqual({
        target,
        status: 404,
        code: "not-found",
      });
      expect(res.headers.get("x-reason")).toContain("without the trailing slash");
    }
    expect((await d.get("/locks/prod/")).status).toBe(200);
  });

  test("an action named like a property every object has (constructor, __proto__) is 404, not an internal error", async () => {
    const d = await daemon();
    for (const target of ["/locks/prod/constructor", "/locks/prod/__proto__", "/locks/prod/toString"])
      expect({ target, status: (await d.get(target)).status }).toEqual({ target, status: 404 });
    expect(d.output()).not.toContain("internal error");
  });

  test("TRACE and CONNECT on an endpoint are 405 like any other method it does not take", async () => {
    const d = await daemon();
    for (const method of ["TRACE", "CONNECT", "PUT"]) {
      for (const path of ["/start", "/locks/prod/start", "/status"]) {
        const res = await d.get(path, { method });
        expect({ method, path, status: res.status }).toEqual({ method, path, status: 405 });
        expect(res.headers.get("allow")).toBe(path === "/status" ? "GET, HEAD" : "GET, POST");
      }
    }
    expect((await d.get("/nowhere", { method: "TRACE" })).status).toBe(404);
    expect((await statusOf(d)).running).toBe(false);
  });

  test("CONNECT in authority form (host:port) is 404 and no internal error", async () => {
    const d = await daemon();
    const { status } = await raw(
      d,
      `CONNECT 127.0.0.1:${d.port} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`,
    );
    expect(status).toBe(404);
    expect(d.output()).not.toContain("internal error");
  });
});

describe("names and reasons are plain text", () => {
  test("raw invalid UTF-8 is refused, not turned into U+FFFD", async () => {
    const d = await daemon();
    const bytes = Buffer.concat([
      Buffer.from("GET /start?name="),
      Buffer.from([0xff, 0xfe]),
      Buffer.from(" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    ]);
    const { status, body } = await raw(d, bytes);
    expect(status).toBe(400);
    expect(body).toBe("0\n");
    expect((await statusOf(d)).running).toBe(false);
  });

  test("bidirectional controls, which spoof names in logs and on the page, are refused", async () => {
    const d = await daemon();
    for (const c of ["\u202e", "\u2066", "\u202a", "\u200e", "\u200f", "\u061c"]) {
      const res = await d.get(`/start?name=${encodeURIComponent(`ana${c}nimda`)}`);
      expect(res.status).toBe(400);
    }
    expect((await statusOf(d)).running).toBe(false);
  });

  test("every invisible format character (Unicode Cf) and the letters that draw nothing are refused, in names and reasons", async () => {
    const d = await daemon();
    for (const c of ["\u200b", "\u2060", "\ufeff", "\u00ad", "\u{e0001}", "\u3164", "\u115f", "\u034f", "\u2800"]) {
      for (const key of ["name", "reason"]) {
        const res = await d.get(`/start?${key}=${encodeURIComponent(`ana${c}x`)}`);
        expect({ c, key, status: res.status }).toEqual({ c, key, status: 400 });
        expect(res.headers.get("x-reason")).toContain("invisible format characters");
      }
    }
    expect((await statusOf(d)).running).toBe(false);
  });
});

describe("tokens", () => {
  test("the bearer scheme is case-insensitive", async () => {
    const d = await daemon({ RS_TOKEN: "s3cret-token" });
    expect(await d.body("/start", { headers: { Authorization: "bearer s3cret-token" } })).toBe("1\n");
    expect(await d.body("/stop", { headers: { Authorization: "BEARER s3cret-token" } })).toBe("1\n");
    expect((await d.get("/start", { headers: { Authorization: "bearer wrong" } })).status).toBe(401);
  });
});

describe("DNS rebinding", () => {
  const browser = (host: string) => ({
    headers: { Origin: `http://${host}`, Host: host, "Sec-Fetch-Site": "same-origin" },
  });

  test("a browser that reached the daemon by a name not in RS_HOSTS cannot change anything", async () => {
    const d = await daemon();
    const res = await d.get("/start?name=evil", browser(`evil.example:${d.port}`));
    expect(res.status).toBe(403);
    expect(res.headers.get("x-reason")).toContain("RS_HOSTS");
    expect((await statusOf(d)).running).toBe(false);
  });

  test("an IP address, localhost, or a name in RS_HOSTS is accepted; scripts without browser headers are not affected", async () => {
    const d = await daemon({ RS_HOSTS: "releases.example.com" });
    expect(await d.body("/start", browser(`127.0.0.1:${d.port}`))).toBe("1\n");
    expect(await d.body("/stop", browser(`localhost:${d.port}`))).toBe("1\n");
    expect(await d.body("/start", browser(`releases.example.com:${d.port}`))).toBe("1\n");
    expect(await d.body("/stop", { headers: { Host: "anything.example" } })).toBe("1\n");
  });

  test("a bad RS_HOSTS stops start-up with one clear line", async () => {
    const { code, stderr } = await runBinary([], { RS_PORT: "1", RS_HOSTS: "ok.example,,bad host" });
    expect(code).toBe(2);
    expect(stderr).toContain("RS_HOSTS=");
  });
});

describe("backups through the daemon", () => {
  test("GET /backup is a consistent copy of the database, and needs the token when one is set", async () => {
    const db = join(tempDir(), "state.db");
    const d = await daemon({ RS_DB: db, RS_TOKEN: "s3cret-token" });
    const auth = { headers: { Authorization: "Bearer s3cret-token" } };
    await d.body("/start?name=sion&reason=v1", auth);
    expect((await d.get("/backup")).status).toBe(401);
    const res = await d.get("/backup", auth);
    expect(res.status).toBe(200);
    const copy = join(tempDir(), "copy.db");
    writeFileSync(copy, new Uint8Array(await res.arrayBuffer()));
    const opened = new Database(copy, { readonly: true });
    const row = opened.query("SELECT holder, release_reason FROM lock WHERE name = 'default'").get();
    opened.close();
    expect(row).toEqual({ holder: "sion", release_reason: "v1" });
  });

  test("releasestatus backup FILE writes the same copy, and will not overwrite a file", async () => {
    const db = join(tempDir(), "state.db");
    const d = await daemon({ RS_DB: db });
    await d.body("/start?name=sion");
    const file = join(tempDir(), "backup.db");
    const made = await runBinary(["backup", file, "--url", d.url]);
    expect(made.code).toBe(0);
    const opened = new Database(file, { readonly: true });
    expect(opened.query("SELECT holder FROM lock WHERE name = 'default'").get()).toEqual({ holder: "sion" });
    opened.close();
    expect((await runBinary(["backup", file, "--url", d.url])).code).toBe(64);
  });
});
