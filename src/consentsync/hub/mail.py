"""Sending the hub's mails over SMTP (smtplib): the double opt-in confirmation, consent requests,
renewals and receipts. The password comes from the environment variable the config names."""

from __future__ import annotations

import os
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import structlog

from consentsync.config import SmtpSettings
from consentsync.domain import email_forms, without_emails

log = structlog.get_logger("consentsync.hub.mail")


class MailFailed(RuntimeError):
    """The SMTP server could not be reached or refused the message (the reason, without
    credentials or the recipient's address)."""


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str | None = None
    attachment: tuple[str, bytes, str] | None = None  # file name, content, MIME type


class Mailer:
    def __init__(
        self, settings: SmtpSettings, *, sender_name: str | None = None, timeout: float = 10.0
    ) -> None:
        self.settings = settings
        self.sender_name = sender_name
        self.timeout = timeout

    def message(self, mail: Mail) -> EmailMessage:
        if not mailable(mail.to):
            raise MailFailed(
                f"the recipient's address is not one address a mail can go to: {NOT_ONE_ADDRESS}"
            )
        message = EmailMessage()
        message["From"] = formataddr((self.sender_name or "", self.settings.sender))
        message["To"] = on_the_wire(mail.to)
        message["Subject"] = mail.subject
        message["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2] or None)
        message.set_content(mail.text)
        if mail.html is not None:
            message.add_alternative(mail.html, subtype="html")
        if mail.attachment is not None:
            name, content, mime = mail.attachment
            maintype, _, subtype = mime.partition("/")
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
        return message

    def send(self, mail: Mail) -> str:
        """Sends ``mail``; returns its Message-ID. Raises ``MailFailed``."""
        message = self.message(mail)
        settings = self.settings
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=self.timeout) as smtp:
                if settings.starttls:
                    smtp.starttls()
                if settings.username:
                    password = os.environ.get(settings.password_env or "", "")
                    if not password:
                        raise MailFailed(f"hub.smtp.password_env: {settings.password_env!r} is not set")
                    smtp.login(settings.username, password)
                # The envelope names the one address, whatever a header parser makes of it.
                smtp.send_message(message, to_addrs=[on_the_wire(mail.to)])
        except (OSError, smtplib.SMTPException) as error:
            raise MailFailed(
                f"SMTP {settings.host}:{settings.port}: {type(error).__name__}: {_reason(error, mail.to)}"
            ) from None
        return str(message["Message-ID"])


def on_the_wire(address: str) -> str:
    """The address as a mail server without SMTPUTF8 takes it where it can: the ledger keeps an
    internationalised domain in Unicode (domain.normalise_email), and its punycode form (IDNA)
    reaches the same mailbox; a local part that is not ASCII needs SMTPUTF8 either way."""
    local = address.rpartition("@")[0]
    if not local.isascii():
        return address
    return next((form for form in email_forms(address) if form.isascii()), address)


NOT_ONE_ADDRESS = "expected local@domain.tld, with no comma, angle bracket, quote, comment or group"


def mailable(address: str) -> bool:
    """Whether ``address`` reads as exactly itself in a To header: one address, nothing else.
    The ledger's check (one "@", no spaces) lets through "someone@example.org,ceo", which a mail
    header reads as two recipients: a sign-up form would mail its links to an address nobody
    gave (the second one a local name the SMTP server completes with its own domain)."""
    header = EmailMessage()
    try:
        header["To"] = address
        found = header["To"].addresses
    except (ValueError, IndexError, TypeError):  # HeaderParseError is a ValueError
        return False
    return len(found) == 1 and found[0].addr_spec == address


def _reason(error: Exception, recipient: str) -> str:
    """Why a mail did not go, as a log may hold it: never the recipient's address. smtplib
    names the refused recipients (``SMTPRecipientsRefused`` is a dict keyed by address), and a
    server's answer often quotes it ("550 5.1.1 <ada@example.org>: user unknown")."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = sorted({str(code) for code, _answer in error.recipients.values()})
        return f"the recipient was refused ({', '.join(codes) or 'no code'})"
    if isinstance(error, smtplib.SMTPResponseException):
        # The server's answer as it was said: its str() is the repr of bytes, where an address
        # that is not ASCII ("jörg@bücher.example", sent with SMTPUTF8) is escaped past both the
        # recipient's own spelling and the search for addresses, and would be logged whole.
        answer = error.smtp_error
        said = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
        text = f"{error.smtp_code} {said}"
    else:
        text = str(error)
    if recipient:
        text = text.replace(recipient, "<email address>")
    return without_emails(text, "<email address>")
