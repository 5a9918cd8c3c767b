"""Keep credentials out of everything an operator or subscriber can see."""

from __future__ import annotations

import logging
import re

# scheme://user:password@host and scheme://user@host. A password is not always percent-encoded as it should
# be: one holding '@', '/', '?' or '#' ends the URL's authority early. So when that authority holds a ':' or an
# '@', everything up to the URL's last '@' goes; a URL that merely has a port and an '@' further on loses more
# than its credentials, which is the side to err on.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")
_AUTHORITY_END = re.compile(r"[/?#]")
# ...?user=admin&pwd=secret: how many cheap IP cameras take their credentials.
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:user|usr|username|login|pass|pwd|passwd|password|token|access_token|api_?key|key|secret"
    r"|auth|sig|signature)=)[^&;#\s]*",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """Replace the credentials of every URL in `text` (user:password@, secret query values) with `***`."""
    return _QUERY_SECRET.sub(r"\g<key>***", _URL.sub(_without_userinfo, text))


def _without_userinfo(url: re.Match[str]) -> str:
    scheme, rest = url["scheme"], url["rest"]
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    if "@" not in rest or ("@" not in authority and ":" not in authority):
        return url[0]
    return f"{scheme}***@{rest[rest.rfind('@') + 1 :]}"


class RedactingFilter(logging.Filter):
    """Redact URL credentials and known secrets from every log record, whoever logs it."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        text = redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks of library errors can quote URLs too: render them now, redacted.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


REDACTOR = RedactingFilter()
