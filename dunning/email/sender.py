"""Send one message over SMTP (aiosmtplib). Every failure raises SmtpError; the calling
activity retries."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib


class SmtpError(Exception):
    """Sending failed. The message names host:port; `code` is the SMTP reply code when the
    server answered (None for connection/timeout failures); `permanent` is True for a 5xx."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.code is not None and 500 <= self.code < 600


async def send_message(
    msg: EmailMessage,
    *,
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    timeout: float = 10,
) -> None:
    """Deliver `msg` to the SMTP server at host:port (envelope from From, to To/Cc/Bcc).

    starttls=True requires STARTTLS; False never upgrades. Credentials are used only when
    both are given. `timeout` bounds each network step (connect, every command).
    """
    where = f"{host}:{port}"
    if (username is None) != (password is None):
        raise SmtpError(f"SMTP {where}: username and password must be given together")
    try:
        refused, _ = await aiosmtplib.send(
            msg,
            hostname=host,
            port=port,
            username=username,
            password=password,
            start_tls=starttls,
            use_tls=False,
            timeout=timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as err:
        codes = [e.code for e in err.recipients]
        raise SmtpError(
            f"SMTP {where}: all recipients refused: " + "; ".join(f"{e.code} {e.message}" for e in err.recipients),
            code=max(codes) if codes else None,
        ) from err
    except aiosmtplib.SMTPResponseException as err:
        raise SmtpError(f"SMTP {where}: server replied {err.code} {err.message}", code=err.code) from err
    except aiosmtplib.SMTPTimeoutError as err:
        raise SmtpError(f"SMTP {where}: timed out after {timeout:g}s: {err}") from err
    except aiosmtplib.SMTPConnectError as err:
        raise SmtpError(f"SMTP {where}: cannot connect: {err}") from err
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
        raise SmtpError(f"SMTP {where}: {type(err).__name__}: {err}") from err
    if refused:
        details = "; ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        raise SmtpError(
            f"SMTP {where}: recipients refused: {details}", code=max(resp.code for resp in refused.values())
        )
