// Text quoted back to a person (in an error, a log line) must read as it is. A direction override
// (U+202E) reverses the rest of the line, other format and control characters hide or break it:
// each is shown as its escape, e.g. \u202e, so the line cannot be made to say something else.

const INVISIBLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/gu;

export const visible = (text: string): string =>
  text.replace(INVISIBLE, (c) => {
    const code = c.codePointAt(0) ?? 0;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });

// Text a person wrote for others to read (a name, a reason) holds none of these, nor U+FFFD, which is
// what invalid UTF-8 becomes on the way in: such text is refused, not shown escaped.
// Also the characters that draw nothing though they are letters or marks: the Hangul fillers, the combining
// grapheme joiner and the blank Braille pattern, which make two names look the same.
const UNREADABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}\ufffd\u115f\u1160\u3164\uffa0\u2800]|\u034f/u;

/** Whether text holds control characters, invisible format characters (direction marks, zero-width) or U+FFFD. */
export const unreadable = (text: string): boolean => UNREADABLE.test(text);
