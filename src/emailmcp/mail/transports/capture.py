"""A transport that sends nothing: the message is accepted and the worker keeps its MIME for inspection."""

from emailmcp.mail.transports.base import SendResult


class CaptureTransport:
    name = "capture"
    keeps_copy = True
    bcc_in_headers = False

    async def send(self, mime: bytes, sender: str, recipients: list[str]) -> SendResult:
        return SendResult(accepted=list(recipients), refused={}, response="captured")
