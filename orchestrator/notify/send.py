"""The thin I/O layer: POST a body to a URL, hand an email to an SMTP server.

Both raise ``SendFailed`` with a reason a person can act on and whether trying again could help
(a 4xx answer or a refused recipient will not get better; a refused connection may).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import urlsplit

import requests

TIMEOUT = 10.0
_RETRYABLE_4XX = {408, 425, 429}


class SendFailed(Exception):
    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what errors may name (a Slack URL's path is its credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = TIMEOUT) -> None:
    """POST ``body``; any 2xx answer is success. Redirects are not followed (a body is not re-sent)."""
    where = origin(url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise SendFailed(f"the URL must start with http:// or https:// (it names {where})", permanent=True)
    try:
        resp = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.Timeout:
        raise SendFailed(f"{where} did not answer within {timeout:g}s") from None
    except requests.RequestException as exc:
        raise SendFailed(f"cannot reach {where}: {type(exc).__name__}") from None
    if 200 <= resp.status_code < 300:
        return
    text = " ".join(resp.text.split())[:200]
    permanent = 300 <= resp.status_code < 500 and resp.status_code not in _RETRYABLE_4XX
    raise SendFailed(f"{where} answered HTTP {resp.status_code}" + (f": {text}" if text else ""), permanent)


def send_email(
    mail: EmailMessage,
    host: str,
    port: int,
    *,
    starttls: bool = False,
    username: str = "",
    password: str = "",
    timeout: float = TIMEOUT,
) -> None:
    """Deliver ``mail`` through ``host:port`` (STARTTLS and login when configured)."""
    where = f"SMTP server {host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            if starttls:
                smtp.starttls(context=ssl.create_default_context())
            if username:
                smtp.login(username, password)
            refused = smtp.send_message(mail)
    except smtplib.SMTPRecipientsRefused as exc:
        raise SendFailed(
            f"{where} refused every recipient: {_refusals(exc.recipients)}",
            permanent=all(code >= 500 for code, _ in exc.recipients.values()),  # 4xx: try later (greylisting)
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise SendFailed(
            f"{where} does not offer STARTTLS (set starttls: false, or use its TLS port)", permanent=True
        ) from None
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        raise SendFailed(f"{where} answered {exc.smtp_code} {text}", permanent=exc.smtp_code >= 500) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise SendFailed(f"cannot reach {where}: {exc}") from None
    if refused:
        raise SendFailed(
            f"{where} delivered to some recipients but refused {_refusals(refused)}", permanent=True
        )


def _refusals(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{addr} ({code} {msg.decode(errors='replace')})" for addr, (code, msg) in recipients.items()
    )
