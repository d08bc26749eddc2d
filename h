HTTP/1.1 400 Bad Request
X-Content-Type-Options: nosniff
Cache-Control: no-store
Content-Type: text/plain; charset=utf-8
X-Reason: "pr%6Fd" is not a lock name: one or more segments joined by /, each 1 to 32 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit, at most 100 characters in all
X-Reason-Code: invalid
Date: Fri, 04 Dec 2026 17:25:08 GMT
Content-Length: 2

