"""Secrets masked out of text bound for a log: the last line of defence when something logs more than it should.

What reaches a log is never meant to carry a secret (tracebacks are rendered without locals, secret settings are
hidden from reprs); `Redactor` catches what slips through anyway. It replaces, wherever they appear:
the values it was given (the admin token, the Fernet key, the database password), the value of any
`Authorization` header, the userinfo of any URL (`scheme://user:pass@host`), and anything shaped like a Dockyard
API key or worker key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from dockyard.secrets import MASK

# A value shorter than this is not looked for literally: masking every "admin" or "1234" in the log would hide
# what the log is for, and a secret that short is guessable anyway.
MIN_LITERAL = 8

# `Authorization: Bearer x`, `authorization=x`, `'authorization': 'x'` and, in an ASGI scope's header list,
# `(b'authorization', b'Bearer x')`: the scheme word is kept, the credential masked.
_AUTHORIZATION = re.compile(
    r"""(?i)(authorization['"]?\s*(?:[:=]|,\s*b?)\s*['"]?)((?:bearer|basic|token)\s+)?[^\s'",;)}\]]+"""
)
# The userinfo of a URL: `postgresql://user:pass@host`, `https://token@host`.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@'\"]+@")
# Dockyard's API keys (`dy_` + 32 URL-safe characters, services/keys.py) and worker keys (`dyw_` + 32).
_KEY_SHAPE = re.compile(r"(?<![A-Za-z0-9_-])(dyw?_)[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])")


class Redactor:
    """Masks secrets in text (see the module docstring). `add` may be called at any time, from any thread: the
    pattern of literals is rebuilt and swapped in whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._literals: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Mask these values too; empty or short ones (under `MIN_LITERAL` characters) are ignored."""
        literals = self._literals | {secret for secret in secrets if len(secret) >= MIN_LITERAL}
        if literals == self._literals:
            return
        # Longest first: a secret that contains another is masked whole.
        alternatives = "|".join(re.escape(secret) for secret in sorted(literals, key=len, reverse=True))
        self._literals, self._pattern = literals, re.compile(alternatives)

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        text = _AUTHORIZATION.sub(lambda match: f"{match[1]}{match[2] or ''}{MASK}", text)
        text = _USERINFO.sub(lambda match: f"{match[1]}{MASK}@", text)
        return _KEY_SHAPE.sub(lambda match: f"{match[1]}{MASK}", text)


def url_password(url: str) -> list[str]:
    """The password of `url` as written and decoded (both may reach a log); empty when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL at all (a bad port): nothing to find
        return []
    return [password, unquote(password)] if password else []
