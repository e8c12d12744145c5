"""Credentials in a tracking URI stay with the MLflow client of the driver, nowhere else.

:func:`redact` hides them in any text (a URI, a log line, an error message);
:func:`for_client` takes them out of an ``http(s)://`` URI and hands them to MLflow through
its own environment variables, so the URI that gradtune prints, logs, pickles and ships to
the workers carries none. A database URI (``postgresql://user:password@host/db``) needs its
password in the URI, so only the driver's client holds it and everything else gets
:func:`redact`'s copy.

Pure string handling, no MLflow or Ray here.
"""

from __future__ import annotations

import re
import urllib.parse

from gradtune.errors import GradtuneError

# The userinfo is everything from "://" to the LAST "@" that is followed by a host (and port)
# and the end of the authority, so a password holding "/" or "@" unencoded is hidden whole.
# On the safe side, a path or query holding "@" is hidden up to that "@" too.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)\S+@"
    r"(?=(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.~%\-]*)(?::\d*)?(?:[/?#\s'\"),;:.!\]>]|$))"
)
# Query parameters that carry a secret: token, access_token, password, secret, api_key,
# sig, X-Amz-Signature, X-Amz-Credential, auth ...
_SECRET_PARAM = re.compile(
    r"(?i)(?P<name>[?&;][^=&#\s?]*(?:token|passw|pwd|secret|key|sig|credential|auth)"
    r"[^=&#\s]*=)[^&#\s'\"]*"
)
HIDDEN = "***"

# MLflow's own variables for the credentials of a tracking server.
USERNAME, PASSWORD, TOKEN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                             "MLFLOW_TRACKING_TOKEN")
ENVIRONMENT = (USERNAME, PASSWORD, TOKEN)
_TOKEN_PARAMS = ("token", "access_token")


def redact(text: str) -> str:
    """Every URI's ``user:password@`` -> ``***@`` and every secret query parameter's value
    -> ``***``; other text unchanged.

    ``http://u:pa/ss@x@host:5000/p?token=t&n=1`` -> ``http://***@host:5000/p?token=***&n=1``.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{HIDDEN}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{HIDDEN}", text)


def for_client(uri: str) -> tuple[str, dict[str, str]]:
    """``(uri, environment)`` for MLflow's client. For ``http(s)://``, the userinfo
    (percent-decoded) becomes ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
    and a ``token`` or ``access_token`` query parameter ``MLFLOW_TRACKING_TOKEN``, which
    MLflow reads itself; the URI returned has none of them. Any other query string or
    fragment is an error (MLflow's REST client would send it as part of every path). Other
    schemes (databases, files) come back as they are, with no environment."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme not in ("http", "https"):
        return uri, {}
    env: dict[str, str] = {}
    match = _USERINFO.match(uri)
    if match is not None:
        userinfo = uri[match.end("scheme") : match.end() - 1]
        if "?" in userinfo or "#" in userinfo:  # or is it a query holding "@"?
            raise GradtuneError(f"tracking.uri {redact(uri)}: ambiguous; percent-encode ? and "
                                "# in the user name and password (%3F, %23)")
        user, sep, password = userinfo.partition(":")
        env[USERNAME] = urllib.parse.unquote(user)
        if sep:
            env[PASSWORD] = urllib.parse.unquote(password)
        uri = match["scheme"] + uri[match.end() :]
    parts = urllib.parse.urlsplit(uri)
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    others = [name for name, _ in params if name.lower() not in _TOKEN_PARAMS]
    if others or parts.fragment or (parts.query and not params):
        what = f"query parameter {others[0]!r}" if others else "query string or fragment"
        raise GradtuneError(
            f"tracking.uri {redact(uri)}: MLflow cannot send a {what} to a tracking server; "
            f"give a token in {TOKEN} instead"
        )
    for _, value in params:
        env[TOKEN] = value
    return urllib.parse.urlunsplit(parts._replace(query="", fragment="")), env
