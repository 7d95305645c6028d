"""Local HTTP servers for the download tests: a stand-in for the Hugging Face Hub's file endpoint
(``HF_ENDPOINT`` points huggingface_hub at it), and the thread that serves a handler."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubFiles(http.server.BaseHTTPRequestHandler):
    """HEAD and GET of ``/<repo_id>/resolve/<revision>/<file>`` for plain (non-LFS, non-xet)
    files, as the Hub answers them: the body, its ETag and the X-Repo-Commit header; 404 with
    the Hub's error code for a file it does not have. Subclasses say which bytes a path has."""

    def data(self) -> bytes | None:
        """The file at ``self.path``, or None."""
        raise NotImplementedError

    def log_message(self, *args) -> None:
        pass

    def _head(self) -> bytes | None:
        data = self.data()
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        data = self._head()
        if data is not None:
            self.wfile.write(data)


@contextlib.contextmanager
def serve_http(handler) -> Iterator[str]:
    """An HTTP server with ``handler`` on 127.0.0.1 in a thread: yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
