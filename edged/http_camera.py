"""Why an HTTP (MJPEG) camera cannot be opened, asked of the camera itself.

OpenCV only says that opening failed. An operator needs to know whether nothing listens there, the path
is wrong or the credentials are refused: one request for the response's status line tells.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from urllib.parse import unquote, urlsplit


def refusal(url: str, timeout: float) -> str | None:
    """What stops a GET of `url` (`Connection refused`, `404 Not Found`, a web page where the stream should be);
    None if the camera answers it with what could be a stream.

    On the camera's own thread: it blocks for up to `timeout`. Credentials in the URL go as Basic auth, as
    FFmpeg sends them; TLS is not verified, as FFmpeg does not by default."""
    parts = urlsplit(url)
    connection = _connection(parts.scheme, parts.hostname or "", parts.port, timeout)
    headers = {}
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()  # the status line and headers: the body (the stream) is not read
    except (OSError, http.client.HTTPException) as error:
        return str(getattr(error, "strerror", None) or error or type(error).__name__)
    finally:
        connection.close()
    if response.status >= 400:
        return f"the camera answered {response.status} {response.reason}"
    content = response.getheader("Content-Type", "").split(";")[0].strip().lower()
    if content.startswith(("text/", "application/json")):  # a web page: the camera's UI rather than its stream
        return f"the camera answered with {content}, not a video stream"
    return None


def _connection(scheme: str, host: str, port: int | None, timeout: float) -> http.client.HTTPConnection:
    if scheme.lower() != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
