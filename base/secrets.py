"""Secrets in URLs and settings: what is secret, and the URL with it hidden.

Secrets never reach a log nor an error message (docs/contract.md §5): base/logs.py masks
every value `Settings.secrets()` names; `redact_url` shows a URL without its password.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

MIN_SECRET_CHARS = 4  # shorter values are not redacted: '***' for every 'a' would say nothing

# scheme://user:PASSWORD@host...: the password runs to the last '@' (so an unescaped '#',
# '/' or '@' in it is still hidden); and a libpq-style ?password=... query parameter
_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*):.*@(?=[^@]*$)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    url = _USERINFO_PASSWORD.sub(r"\g<head>:***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<head>***", url)


def url_passwords(url: str) -> list[str]:
    """The password of a URL's user:password@ and of its ?password= query parameter."""
    found: list[str] = []
    match = _USERINFO_PASSWORD.match(url)
    if match:
        found.append(url[len(match.group("head")) + 1 : match.end() - 1])
    _, _, query = url.partition("?")
    found += [v for k, v in parse_qsl(query.partition("#")[0]) if k.lower() == "password"]
    return [p for p in found if p]


def webhook_secrets(url: str) -> list[str]:
    """What of a webhook URL is secret: everything after the host (Slack:
    /services/T…/B…/TOKEN, Discord: /api/webhooks/ID/TOKEN), its last path segment and
    long segments on their own, query values, and a user:password."""
    found = url_passwords(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return [*found, url]
    if not parts.hostname:  # no host to tell apart from the rest: all of it is secret
        return [*found, url]
    rest = url.split(parts.netloc, 1)[1] if parts.netloc else url
    if rest.strip("/"):
        found.append(rest)
    segments = [s for s in parts.path.split("/") if s]
    if segments:
        found.append(segments[-1])
        found += [s for s in segments if len(s) >= 16]
    found += [v for _, v in parse_qsl(parts.query)]
    return found
