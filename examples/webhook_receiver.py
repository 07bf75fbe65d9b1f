"""A webhook receiver that checks dockguard's signature before it trusts a call (stdlib only).

    DOCKGUARD_CALLBACK_SECRET=… python examples/webhook_receiver.py 9000

Submit with "callback_url": "http://<this host>:9000/dockguard" (the operator must list the host
in DOCKGUARD_CALLBACK_ALLOWED_HOSTS). Each verified call prints "verified <id> <status>" and is
answered 204; a call without a valid, recent signature is answered 401 and printed "refused"."""

import hashlib
import hmac
import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["DOCKGUARD_CALLBACK_SECRET"].encode()
TOLERANCE_S = 300  # older signatures are replays


def verify(header: str, body: bytes) -> bool:
    """`X-Dockguard-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    match = re.fullmatch(r"t=([1-9][0-9]{0,11}),v1=([0-9a-f]{64})", header)
    if match is None:  # malformed: refused, never an exception
        return False
    t, v1 = int(match[1]), match[2].encode()
    expected = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest().encode()
    return abs(time.time() - t) <= TOLERANCE_S and hmac.compare_digest(v1, expected)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not verify(self.headers.get("X-Dockguard-Signature", ""), body):
            print("refused", flush=True)
            self.send_response(401)
        else:
            job = json.loads(body)  # only now is the body trusted
            print(f"verified {job['id']} {job['status']}", flush=True)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet: one line per call, above
        pass


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
