// SQLite's write-ahead log read the way SQLite recovers it after a crash
// (https://www.sqlite.org/fileformat2.html#walformat), to find what recovery would silently drop.
// SQLite replays frames until the first one whose salts or checksum do not match, and forgets the
// rest: a torn last write or frames left from before the log was restarted (old salts) are normal,
// but a frame of this log after a bad one means committed changes, answered 1, would be lost.

const HEADER = 32;
const FRAME_HEADER = 24;
const MAGIC_LITTLE_ENDIAN = 0x377f0682; // the checksums are sums of little-endian words
const MAGIC_BIG_ENDIAN = 0x377f0683;
const FORMAT = 3007000;

/**
 * What recovery would leave out although it belongs to the log: the first bad frame and how many follow it; or
 * only its last frame, whole in length but failing its checksum (a write cut short, or damage: nobody can tell).
 */
export type LostFrames =
  | { badFrame: number; framesAfter: number; frames: number }
  | { badHeader: true }
  | { badLastFrame: number };

/** null when SQLite's recovery would keep every frame of the log that could have been committed. */
export function lostFrames(log: Uint8Array): LostFrames | null {
  if (log.length < HEADER) return null; // SQLite ignores a log without a whole header: nothing was committed in it
  const view = new DataView(log.buffer, log.byteOffset, log.byteLength);
  const word = (at: number) => view.getUint32(at); // the format's integers are big-endian
  const magic = word(0);
  const rawPageSize = word(8);
  const pageSize = rawPageSize === 1 ? 65536 : rawPageSize;
  const headerValid =
    (magic === MAGIC_LITTLE_ENDIAN || magic === MAGIC_BIG_ENDIAN) &&
    word(4) === FORMAT &&
    pageSize >= 512 &&
    pageSize <= 65536 &&
    (pageSize & (pageSize - 1)) === 0;
  if (!headerValid) return log.length > HEADER ? { badHeader: true } : null;
  const littleEndian = magic === MAGIC_LITTLE_ENDIAN;
  let sum = checksum(view, 0, 24, [0, 0], littleEndian);
  if (sum[0] !== word(24) || sum[1] !== word(28)) return log.length > HEADER ? { badHeader: true } : null;

  const salts = [word(16), word(20)];
  const frameSize = FRAME_HEADER + pageSize;
  const frames = Math.floor((log.length - HEADER) / frameSize); // a torn last frame is not one
  const at = (i: number) => HEADER + i * frameSize;
  const ofThisLog = (i: number) => word(at(i) + 8) === salts[0] && word(at(i) + 12) === salts[1];
  for (let i = 0; i < frames; i++) {
    const start = at(i);
    // Each frame's checksum runs on from the one before it, over its first 8 bytes and its page.
    sum = checksum(view, start, 8, sum, littleEndian);
    sum = checksum(view, start + FRAME_HEADER, pageSize, sum, littleEndian);
    const valid = ofThisLog(i) && word(start) !== 0 && sum[0] === word(start + 16) && sum[1] === word(start + 20);
    if (valid) continue;
    let framesAfter = 0;
    for (let j = i + 1; j < frames; j++) if (ofThisLog(j)) framesAfter++;
    if (framesAfter > 0) return { badFrame: i + 1, framesAfter, frames };
    // The last frame of this log (frames after it are from before the log restarted): the commit it ends is lost.
    return ofThisLog(i) ? { badLastFrame: i + 1 } : null;
  }
  return null;
}

// SQLite's walChecksumBytes: two running 32-bit sums over pairs of words.
function checksum(
  view: DataView,
  start: number,
  length: number,
  [s0, s1]: number[],
  littleEndian: boolean,
): [number, number] {
  let a = s0 as number;
  let b = s1 as number;
  for (let i = start; i < start + length; i += 8) {
    a = (a + view.getUint32(i, littleEndian) + b) >>> 0;
    b = (b + view.getUint32(i + 4, littleEndian) + a) >>> 0;
  }
  return [a, b];
}
