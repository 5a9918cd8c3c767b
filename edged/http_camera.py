"""Why an HTTP (MJPEG) camera cannot be opened, asked of the camera itself.

OpenCV only says that opening failed. An operator needs to know whether nothing listens there, the path
is wrong or the credentials are refused: one request for the response's status line tells.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit


def refusal(url: str, timeout: float) -> str | None:
    """What stops a GET of `url` (`Connection refused`, `404 Not Found`, a web page where the stream should be);
    None if the camera answers it with what could be a stream, or if the question itself fails.

    On the camera's own thread: each step (connecting, the answer) may take up to `timeout`. As FFmpeg does,
    credentials in the URL are sent only when the camera asks for them (Basic or Digest), and TLS is not
    verified. The reason never quotes the URL."""
    try:
        return _ask(url, timeout)
    except Exception:  # a URL urllib cannot even send (say, a non-ASCII path): no reason rather than a crash
        return None


def _ask(url: str, timeout: float) -> str | None:
    parts = urlsplit(url)
    bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path or "/", parts.query, ""))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
    if parts.username is not None:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, bare, unquote(parts.username), unquote(parts.password or ""))
        handlers += [urllib.request.HTTPBasicAuthHandler(passwords), urllib.request.HTTPDigestAuthHandler(passwords)]
    try:
        # The status line and headers: the body (the stream) is not read.
        with urllib.request.build_opener(*handlers).open(bare, timeout=timeout) as response:
            content = response.headers.get_content_type()
    except HTTPError as error:
        return f"the camera answered {error.code} {error.reason}"
    except URLError as error:
        reason = error.reason
        return reason.strerror or str(reason) if isinstance(reason, OSError) else None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as error:  # the connection broke while waiting for the answer
        return getattr(error, "strerror", None) or type(error).__name__
    if content.startswith("text/") or content == "application/json":  # the camera's web UI, not its stream
        return f"the camera answered with {content}, not a video stream"
    return None
