"""``python -m pyflannel.lab.whoami [PORT]``: an HTTP server that answers every GET with the
address the request came from, as the server saw it.

The lab runs it outside the overlay and in containers to show what masquerading did to a
request on its way: the cell's underlay address, or the container's own.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: The port the lab's whoami servers listen on (the containers' file servers have 8000).
PORT = 8001


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str] | None = None) -> int:
    """Serve on *PORT* (or the port given) on every address until killed."""
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else PORT
    with ThreadingHTTPServer(("", port), _Handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
