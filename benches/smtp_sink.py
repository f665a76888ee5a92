#!/usr/bin/env python3
"""A local SMTP sink for benches/soak.py: accepts every message and appends one line per message,
`<Message-ID>\t<unix time received>`, to a log file (flushed before the 250, so a message the
sender saw accepted is always in the log). --delay-ms holds each DATA answer to play a slow relay.

    python3 benches/smtp_sink.py --port 2626 --log /tmp/sink.log [--delay-ms 200]
"""
import argparse
import asyncio
import signal
import time


def message_id(header_lines):
    # Headers may be folded (continuation lines start with whitespace).
    for i, line in enumerate(header_lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for cont in header_lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            return value.strip().decode("ascii", "replace")
    return "-"


class Sink:
    def __init__(self, log_path, delay_ms):
        self.log = open(log_path, "a", buffering=1)
        self.delay = delay_ms / 1000.0

    async def handle(self, reader, writer):
        async def reply(text):
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            await reply("220 soak-sink ESMTP")
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb == b"EHLO":
                    # No PIPELINING, STARTTLS or AUTH: one command, one answer.
                    await reply("250-soak-sink\r\n250 8BITMIME")
                elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    await reply("250 OK")
                elif verb == b"DATA":
                    await reply("354 End data with <CR><LF>.<CR><LF>")
                    headers, in_headers = [], True
                    while True:
                        data = await reader.readline()
                        if not data:
                            return
                        if data in (b".\r\n", b".\n"):
                            break
                        if data.startswith(b".."):
                            data = data[1:]
                        if in_headers:
                            stripped = data.rstrip(b"\r\n")
                            if stripped:
                                headers.append(stripped)
                            else:
                                in_headers = False
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    self.log.write(f"{message_id(headers)}\t{time.time():.6f}\n")
                    await reply("250 OK queued")
                elif verb == b"QUIT":
                    await reply("221 Bye")
                    break
                else:
                    await reply("502 Command not implemented")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the sender was killed mid-conversation: expected during the soak
        finally:
            writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2626)
    p.add_argument("--log", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    a = p.parse_args()
    sink = Sink(a.log, a.delay_ms)
    server = await asyncio.start_server(sink.handle, a.host, a.port, limit=1 << 20, backlog=512)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
