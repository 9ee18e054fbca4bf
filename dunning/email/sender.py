"""Send one message over SMTP (aiosmtplib), step by step, so the caller knows whether the
message may have been delivered. Every failure raises SmtpError; its text never carries an
email address (`dunning.scrub`): servers echo recipients in their replies."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import aiosmtplib

from dunning.scrub import scrub


class SmtpError(Exception):
    """Sending failed. The message names host:port; `code` is the SMTP reply code when the
    server answered (None for connection/timeout failures); `permanent` is True for a 5xx."""

    def __init__(self, message: str, *, code: int | None = None, ambiguous: bool = False) -> None:
        super().__init__(scrub(message))
        self.code = code
        # True when the failure came after DATA began and before the server's final reply:
        # the message may have been stored and delivered. Never treat it as "not sent".
        self.ambiguous = ambiguous

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
    data_timeout: float | None = None,
    before_data: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Deliver `msg` to the SMTP server at host:port (envelope from From, to To/Cc/Bcc).

    starttls=True requires STARTTLS; False never upgrades. Credentials are used only when
    both are given. `timeout` bounds each network step (connect, every command);
    `data_timeout` the DATA step (default `timeout`). `before_data` is awaited just before
    the message is transmitted: from then on a failure is `ambiguous` (a cancellation
    too propagates as it is, and the caller must treat the message as maybe delivered).
    """
    where = f"{host}:{port}"
    if (username is None) != (password is None):
        raise SmtpError(f"SMTP {where}: username and password must be given together")
    smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout, start_tls=starttls, use_tls=False)
    sending = False
    try:
        try:
            await smtp.connect()
            if username is not None and password is not None:
                await smtp.login(username, password)
            if before_data is not None:
                await before_data()
            sending = True  # from MAIL FROM on, a failure without a reply may mean "delivered"
            refused, _ = await smtp.send_message(msg, timeout=data_timeout or timeout)
            sending = False
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [e.code for e in err.recipients]
            raise SmtpError(
                f"SMTP {where}: all recipients refused: " + "; ".join(f"{e.code} {e.message}" for e in err.recipients),
                code=max(codes) if codes else None,
            ) from err
        except aiosmtplib.SMTPResponseException as err:  # the server said no: not accepted
            raise SmtpError(f"SMTP {where}: server replied {err.code} {err.message}", code=err.code) from err
        except aiosmtplib.SMTPConnectError as err:
            raise SmtpError(f"SMTP {where}: cannot connect: {err}") from err
        except aiosmtplib.SMTPTimeoutError as err:
            raise SmtpError(f"SMTP {where}: timed out: {err}", ambiguous=sending) from err
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise SmtpError(f"SMTP {where}: {type(err).__name__}: {err}", ambiguous=sending) from err
    finally:
        if smtp.is_connected:  # an error or a cancellation: drop the connection, never wait
            smtp.close()
    if refused:
        details = "; ".join(f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in refused.items())
        raise SmtpError(
            f"SMTP {where}: recipients refused: {details}", code=max(resp.code for resp in refused.values())
        )
