#!/usr/bin/env python3
"""The lab's relay attempt, as the postmortem's bots made it (stdlib only).

Usage: lab-smtp-client.py HOST PORT [--timeout S] [--connect-timeout S]
                          [--helo NAME] [--result FILE]

Connects to HOST:PORT (an IPv6 literal without brackets is fine), then
EHLO, MAIL FROM:<spam@...>, RCPT TO:<victim@qq.com>, DATA with a spam body
whose Subject is Chinese, QUIT. Prints the dialogue compactly ("C:" what we
sent, "S:" what the server replied; a multi-line reply is shown as its first
line plus a count).

The relay is OPEN when RCPT TO gets a 2xx reply, CLOSED otherwise (refused,
unreachable, timed out, closed before the banner, 4xx/5xx). Every socket
operation is bounded by the connect timeout and by one overall deadline, so a
paused container (docker-proxy accepts, then nothing) gives CLOSED quickly.

--result FILE gets shell-quoted KEY=VALUE lines (VERDICT, REASON, RCPT_REPLY,
QUEUE_ID, HELO, PEER) for scripts/lab to source.

Exit: 0 open, 1 closed, 2 usage error.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import shlex
import socket
import sys
import time

FROM = "spam@some-random-domain.example"
TO = "victim@qq.com"
SUBJECT = "发票通知 - 您的账户有新消息，请立即查看"
BODY = "您好！恭喜您获得本月幸运大奖，点击领取。免费发票，代开各类发票，联系QQ。\n"


class Closed(Exception):
    """The attempt ended before RCPT TO got a 2xx reply."""


class Dialogue:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def _remaining(self, doing: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Closed(f"timed out {doing}")
        return left

    def send(self, line: str, show: str | None = None) -> None:
        print(f"C: {show if show is not None else line}", flush=True)
        self._remaining(f"sending {line.split(' ')[0]}")
        self.sock.settimeout(self._remaining("sending"))
        try:
            self.sock.sendall(line.encode("utf-8") + b"\r\n")
        except TimeoutError:
            raise Closed(f"timed out sending {line.split(' ')[0]}") from None
        except OSError as exc:
            raise Closed(f"{exc.strerror or exc} while sending {line.split(' ')[0]}") from None

    def reply(self, waiting_for: str) -> tuple[int, str]:
        """Read one (possibly multi-line) reply; return (code, last line)."""
        lines: list[str] = []
        while True:
            while b"\n" not in self.buf:
                self.sock.settimeout(self._remaining(f"waiting for {waiting_for}"))
                try:
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    raise Closed(f"timed out waiting for {waiting_for}") from None
                except OSError as exc:
                    raise Closed(f"{exc.strerror or exc} waiting for {waiting_for}") from None
                if not chunk:
                    raise Closed(f"connection closed by the server waiting for {waiting_for}")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        extra = f"  (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
        print(f"S: {lines[0]}{extra}", flush=True)
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise Closed(f"unparsable reply {lines[-1]!r}") from None
        return code, lines[-1]


def message(helo: str) -> str:
    subject = "=?UTF-8?B?" + base64.b64encode(SUBJECT.encode()).decode() + "?="
    body = base64.encodebytes(BODY.encode()).decode().replace("\n", "\r\n")
    return (
        f"From: =?UTF-8?B?{base64.b64encode('客服中心'.encode()).decode()}?= <{FROM}>\r\n"
        f"To: <{TO}>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@{helo}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{body}"
    )


def attempt(host: str, port: int, helo: str, connect_timeout: float, timeout: float, result: dict[str, str]) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    result["PEER"] = shown
    print(f"-- connecting to {shown}", flush=True)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(connect_timeout, timeout))
        try:
            sock.connect((host, port))
        except TimeoutError:
            raise Closed(f"connect to {shown} timed out") from None
        except OSError as exc:
            raise Closed(f"{(exc.strerror or str(exc)).lower()} ({shown})") from None
        d = Dialogue(sock, deadline)
        code, _ = d.reply("the 220 banner")
        if code != 220:
            raise Closed(f"banner {code}")
        d.send(f"EHLO {helo}")
        code, line = d.reply("the EHLO reply")
        if code != 250:
            raise Closed(f"EHLO -> {line}")
        d.send(f"MAIL FROM:<{FROM}>")
        code, line = d.reply("the MAIL FROM reply")
        if code // 100 != 2:
            raise Closed(f"MAIL FROM:<{FROM}> -> {line}")
        d.send(f"RCPT TO:<{TO}>")
        code, line = d.reply("the RCPT TO reply")
        result["RCPT_REPLY"] = line
        relayed = code // 100 == 2
        # The bots sent DATA regardless (Postfix then answers 554 5.5.1).
        d.send("DATA")
        code, dline = d.reply("the DATA reply")
        if code == 354:
            text = message(helo)
            # message() ends with CRLF and is base64/ASCII: no dot-stuffing needed.
            d.send(text + ".", show=f"<{len(text.encode())} bytes, Subject: {SUBJECT}> .")
            code, dline = d.reply("the end-of-data reply")
            if code == 250 and "queued as " in dline:
                result["QUEUE_ID"] = dline.rsplit("queued as ", 1)[1].split()[0]
        result["DATA_REPLY"] = dline
        d.send("QUIT")
        try:
            d.reply("the QUIT reply")
        except Closed:
            pass
        if not relayed:
            raise Closed(f"RCPT TO:<{TO}> -> {line}")
        result["VERDICT"] = "open"
        result["REASON"] = f"RCPT TO:<{TO}> -> {line}"
    finally:
        sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--connect-timeout", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=10.0, help="overall deadline in seconds")
    ap.add_argument("--helo", default=None, help="EHLO name (default: a random bot-like name)")
    ap.add_argument("--result", default=None, help="write shell KEY=VALUE results here")
    args = ap.parse_args()
    helo = args.helo or f"bot-{secrets.token_hex(4)}.example"
    host = args.host.strip("[]")
    result = {"VERDICT": "closed", "REASON": "", "RCPT_REPLY": "", "DATA_REPLY": "", "QUEUE_ID": "",
              "HELO": helo, "PEER": ""}
    try:
        attempt(host, args.port, helo, args.connect_timeout, args.timeout, result)
    except Closed as exc:
        result["VERDICT"] = "closed"
        result["REASON"] = str(exc)
    if args.result:
        with open(args.result, "w", encoding="utf-8") as fh:
            for key, value in result.items():
                fh.write(f"{key}={shlex.quote(value)}\n")
    return 0 if result["VERDICT"] == "open" else 1


if __name__ == "__main__":
    sys.exit(main())
