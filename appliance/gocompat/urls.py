"""Credentials hidden in a URL, the one rule for every log line, error message and report.

A proxy URL (HTTPS_PROXY, Settings.https_proxy) may carry `user:password@` or a bare token
`token@`; the userinfo is what stands before the last `@` of the authority, as Go's url.Parse
reads it, so a password that itself holds an `@` is hidden whole.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_AUTHORITY_END = re.compile(r"[/?#]")


def redact(url: str) -> str:
    """`url` with its password, or a bare user token, replaced by `***`; the rest as written."""
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(0) if scheme_match else ""
    rest = url[len(scheme) :]
    end_match = _AUTHORITY_END.search(rest)
    end = end_match.start() if end_match else len(rest)
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}{masked}@{hostport}{rest[end:]}"
