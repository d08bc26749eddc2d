// The one whole-number parser, for settings and request parameters alike:
// digits only (no sign, no spaces, no exponent), within limits.

/** The number `raw` spells, or null when it is not a whole number from `min` to `max`. */
export function wholeNumber(raw: string, min: number, max: number): number | null {
  if (!/^\d{1,16}$/.test(raw)) return null;
  const n = Number(raw);
  return n >= min && n <= max ? n : null;
}
