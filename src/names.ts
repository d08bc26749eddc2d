// Lock names: one or more segments joined by `/`, forming a tree (`prod/eu` is
// under `prod`). The same rule for paths, settings and the client.

export const LOCK_NAME_RULE =
  "one or more segments joined by /, each 1 to 32 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit, at most 100 characters in all";

const SEGMENT = /^[a-z0-9][a-z0-9._-]{0,31}$/;

export function validLockName(name: string): boolean {
  return name.length > 0 && name.length <= 100 && name.split("/").every((s) => SEGMENT.test(s));
}

export const ROOT = ""; // the root of the tree: /block and /unblock act on it
export const DEFAULT_LOCK = "default"; // the original's one lock: /start, /stop, /renew, /status
