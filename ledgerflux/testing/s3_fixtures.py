"""pytest fixtures for S3-backed tests (marker ``s3``).

``s3_endpoint`` (session) runs moto in server mode on a free local port — a real HTTP
socket, so boto3 is exercised exactly as against MinIO or AWS — and yields its URL. Dummy
AWS credentials are put in the environment for the session, so nothing can ever reach a
real account.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

__all__ = ["s3_endpoint"]

_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server shared by the session."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _DUMMY_ENV.items():
            mp.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
