// The state rules alone, without HTTP or storage: the original's table, row by row.
import { describe, expect, test } from "bun:test";
import {
  andThen,
  block,
  EMPTY_STATE,
  emptyState,
  expire,
  type Outcome,
  renew,
  type State,
  start,
  stop,
  unblock,
} from "../src/release.ts";

const T = Date.parse("2026-11-27T09:00:00Z");
const sion = { name: "sion", reason: "v2.3.1", ttlSeconds: null };

function next(o: Outcome): State {
  if (!o.ok) throw new Error(`expected a change, got ${o.reason}: ${o.message}`);
  return o.next;
}
const reason = (o: Outcome) => (o.ok ? "changed" : o.reason);
const running = next(start(EMPTY_STATE, sion, T, 0));
const blocked = next(block(EMPTY_STATE, { name: "ana", reason: "freeze" }, T));

describe("start", () => {
  test("is granted when no release runs and releasing is open", () => {
    expect(running.release).toEqual({ id: 1, name: "sion", reason: "v2.3.1", startedAt: T, expiresAt: null });
  });
  test("a second start is refused while a release runs", () => {
    const o = start(running, { ...sion, name: "bob" }, T + 1, 0);
    expect(reason(o)).toBe("running");
    expect(o.ok ? "" : o.message).toContain("release #1 by sion");
  });
  test("is refused while releasing is blocked", () => {
    expect(reason(start(blocked, sion, T, 0))).toBe("blocked");
  });
  test("is refused to a newcomer while others wait", () => {
    expect(reason(start(EMPTY_STATE, sion, T, 2))).toBe("queued");
  });
  test("ids grow with every grant and are never reused", () => {
    let s = EMPTY_STATE;
    const ids: number[] = [];
    for (let i = 0; i < 5; i++) {
      s = next(start(s, sion, T, 0));
      ids.push(s.release?.id ?? 0);
      s = next(stop(s, null, { name: "" }, T));
    }
    expect(ids).toEqual([1, 2, 3, 4, 5]);
  });
  test("a ttl sets when the lease ends", () => {
    const s = next(start(EMPTY_STATE, { ...sion, ttlSeconds: 60 }, T, 0));
    expect(s.release?.expiresAt).toBe(T + 60_000);
  });
  test("records a started event with who and what", () => {
    const o = start(EMPTY_STATE, sion, T, 0);
    expect(o.ok && o.events).toEqual([
      { lock: "default", at: T, kind: "started", releaseId: 1, name: "sion", reason: "v2.3.1" },
    ]);
  });
});

describe("stop", () => {
  test("ends a running release", () => {
    expect(next(stop(running, null, { name: "" }, T)).release).toBeNull();
  });
  test("is refused when no release runs", () => {
    expect(reason(stop(EMPTY_STATE, null, { name: "" }, T))).toBe("not-running");
  });
  test("a block survives a stop, and a stop works while blocked", () => {
    const both = next(block(running, { name: "ana", reason: "freeze" }, T));
    const after = next(stop(both, null, { name: "" }, T));
    expect(after.release).toBeNull();
    expect(after.block?.name).toBe("ana");
  });
  test("with an id stops only that release", () => {
    expect(reason(stop(running, 7, { name: "" }, T))).toBe("wrong-id");
    expect(next(stop(running, 1, { name: "" }, T)).release).toBeNull();
  });
});

describe("block and unblock", () => {
  test("block is granted once, then refused as already blocked", () => {
    expect(blocked.block).toEqual({ name: "ana", reason: "freeze", since: T });
    expect(reason(block(blocked, { name: "bob", reason: "" }, T))).toBe("blocked");
  });
  test("unblock is granted when blocked, refused when not", () => {
    expect(next(unblock(blocked, { name: "ana" }, T)).block).toBeNull();
    expect(reason(unblock(EMPTY_STATE, { name: "ana" }, T))).toBe("not-blocked");
  });
  test("blocking leaves a running release running", () => {
    expect(next(block(running, { name: "ana", reason: "" }, T)).release?.id).toBe(1);
  });
});

describe("leases", () => {
  const leased = next(start(EMPTY_STATE, { ...sion, ttlSeconds: 10 }, T, 0));
  test("a release expires once its lease has run out, not before", () => {
    expect(expire(leased, T + 9_999)).toBeNull();
    const o = expire(leased, T + 10_000);
    expect(o?.next.release).toBeNull();
    expect(o?.events[0]?.kind).toBe("expired");
  });
  test("a release without a lease never expires", () => {
    expect(expire(running, T + 1e12)).toBeNull();
  });
  test("renew extends the lease of the right id only", () => {
    expect(next(renew(leased, 1, 30, T + 5_000)).release?.expiresAt).toBe(T + 35_000);
    expect(reason(renew(leased, 2, 30, T))).toBe("wrong-id");
    expect(reason(renew(EMPTY_STATE, 1, 30, T))).toBe("wrong-id");
  });
  test("andThen keeps the events of both steps and stops at a refusal", () => {
    const expired = expire(leased, T + 10_000);
    if (!expired) throw new Error("expected expiry");
    const o = andThen(expired, (s) => start(s, { ...sion, name: "bob" }, T + 10_000, 0));
    expect(o.ok && o.events.map((e) => e.kind)).toEqual(["expired", "started"]);
    expect(o.ok && o.next.release?.id).toBe(2);
    expect(reason(andThen(expired, (s) => stop(s, null, { name: "" }, T)))).toBe("not-running");
  });
});

describe("a lock with a limit", () => {
  const devices = { ...emptyState("staging/devices"), limit: 3 };
  const holders = (s: State) => s.releases.map((r) => r.id);
  const three = [1, 2, 3].reduce((s) => next(start(s, sion, T, 0)), devices);
  test("is held by up to its limit of releases at once, each with its own id", () => {
    expect(holders(three)).toEqual([1, 2, 3]);
  });
  test("one more start is refused full, naming the holders", () => {
    const o = start(three, sion, T, 0);
    expect(reason(o)).toBe("full");
    expect(o.ok ? "" : o.message).toContain("3 of 3");
    expect(o.ok ? "" : o.message).toContain("release #1");
  });
  test("a stop without an id is refused ambiguous and changes nothing; with an id it ends that release only", () => {
    const o = stop(three, null, { name: "" }, T);
    expect(reason(o)).toBe("ambiguous");
    expect(o.ok ? "" : o.message).toContain("id=");
    expect(holders(next(stop(three, 2, { name: "" }, T)))).toEqual([1, 3]);
    expect(reason(stop(three, 9, { name: "" }, T))).toBe("wrong-id");
  });
  test("renew and lease expiry act on each release alone", () => {
    const leased = next(start(devices, { ...sion, ttlSeconds: 10 }, T, 0));
    const two = next(start(leased, { ...sion, ttlSeconds: 60 }, T, 0));
    expect(holders(expire(two, T + 10_000)?.next ?? two)).toEqual([2]);
    const renewed = next(renew(two, 1, 100, T + 5_000));
    expect(renewed.releases.map((r) => r.expiresAt)).toEqual([T + 105_000, T + 60_000]);
  });
  test("a release on it still keeps the locks above and below it from starting", () => {
    const below = {
      ...emptyState("staging/devices/pixel-7"),
      around: [{ lock: "staging/devices", releases: three.releases, block: null }],
    };
    expect(reason(start(below, sion, T, 0))).toBe("running");
  });
  test("a limit-1 lock keeps its words: a second start is refused running", () => {
    expect(reason(start(running, sion, T, 0))).toBe("running");
  });
});
