// A lock's neighbours (the locks above and below it that hold a release or a block) found from an
// index of the locks by every lock above them, rather than by a walk over every lock: with ten
// thousand locks in use, /locks shows each of them with its neighbours, and a walk per lock made
// that ten thousand squared.
import type { Neighbour } from "../release.ts";
import { ancestorsOf, type Entry } from "./store.ts";

/** Finds the neighbours of a lock, as scopeOf would by a walk, in the same order (that of `entries`). */
export type FindAround = (lock: string) => Neighbour[];

export function indexAround(entries: Map<string, Entry>): FindAround {
  const place = new Map<string, number>(); // each lock in use, by its place in `entries`
  const found: Neighbour[] = [];
  const below = new Map<string, number[]>(); // for each name, the places of the locks in use under it
  for (const [lock, e] of entries) {
    if (e.releases.length === 0 && !e.block) continue;
    place.set(lock, found.length);
    for (const above of ancestorsOf(lock)) {
      const list = below.get(above);
      if (list) list.push(found.length);
      else below.set(above, [found.length]);
    }
    found.push({ lock, releases: e.releases, block: e.block });
  }
  return (lock) => {
    const places = [...(below.get(lock) ?? [])];
    for (const above of ancestorsOf(lock)) {
      const at = place.get(above);
      if (at !== undefined) places.push(at);
    }
    return places.sort((a, b) => a - b).map((at) => found[at] as Neighbour);
  };
}
