#!/usr/bin/env python3
"""Counts the messages of a stream on the subjects matching a filter, by
asking JetStream's stream info API over the plain NATS protocol (no
client library needed).

  subjects.py URL STREAM FILTER    print the count

URL is nats://127.0.0.1:PORT, a server the calling script started.
"""
import json
import socket
import sys


def count(url, stream, subject_filter):
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # the server's INFO
        body = json.dumps({"subjects_filter": subject_filter}).encode()
        s.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            b"SUB _INBOX.upgrade 1\r\n"
            + f"PUB $JS.API.STREAM.INFO.{stream} _INBOX.upgrade {len(body)}\r\n".encode()
            + body
            + b"\r\n"
        )
        while True:
            line = f.readline()
            if not line:
                raise SystemExit("the server closed the connection")
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise SystemExit(line.decode().strip())
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                info = json.loads(f.read(size + 2)[:-2])
                if "error" in info:
                    raise SystemExit(json.dumps(info["error"]))
                return sum((info["state"].get("subjects") or {}).values())


if __name__ == "__main__":
    print(count(*sys.argv[1:4]))
