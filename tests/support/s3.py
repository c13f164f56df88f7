"""moto's S3 server on 127.0.0.1 and the environment that reaches it, for the tests and the soak benchmark."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from .processes import free_port

# botocore's own retries off, gani's short: an outage meets gani_core.storage's retries (0.2 + 0.4 + 0.8 + 1.6 +
# 3.2 s of backoff, plus jitter: about 6 s), not botocore's inside one call.
SHORT_RETRIES = {
    "AWS_MAX_ATTEMPTS": "1",                # botocore: one attempt per call; gani_core.storage retries instead
    "GANI_STORAGE_RETRIES": "5",
    "GANI_STORAGE_BACKOFF": "0.2",
}


class S3Endpoint:
    """moto's S3 server on 127.0.0.1, which can be stopped and started again on the same port. Its buckets live in
    this process's memory, so they survive a stop: what a restarted endpoint serves is what it held."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def up(self) -> bool:
        return self._server is not None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Unreachable (connection refused) within the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def outage(self, seconds: float) -> Iterator[None]:
        """Unreachable from now on, and started again after ``seconds`` in the background while the block runs
        (what the block does meets the outage and its end); the endpoint is back when the block is left."""
        self.stop()
        back = threading.Timer(seconds, self.start)
        back.start()
        try:
            yield
        finally:
            back.join()

    def __enter__(self) -> S3Endpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_environment(endpoint: S3Endpoint, secret: str = "testing") -> dict[str, str]:
    """What boto, s3fs and every worker process need to reach ``endpoint``, as for any s3fs / boto user
    (``AWS_ENDPOINT_URL`` points botocore at the server); ``secret`` is the secret access key."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint.url}


@contextlib.contextmanager
def s3_service(bucket: str, cache_dir: str | Path, secret: str = "testing",
               env: Mapping[str, str] | None = None) -> Iterator[S3Endpoint]:
    """An S3Endpoint holding the empty ``bucket``. Within the block this process's environment reaches it
    (s3_environment with ``secret``; no ``AWS_PROFILE``), the checkpoint download cache (``GANI_CACHE_DIR``) is
    ``cache_dir``, and ``env`` is set too: set before anything starts workers, which inherit them. What the block
    changed in the environment is undone after it."""
    import boto3
    import s3fs

    with S3Endpoint() as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in {**s3_environment(endpoint, secret), "GANI_CACHE_DIR": str(cache_dir),
                            **(env or {})}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3").create_bucket(Bucket=bucket)
        try:
            yield endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
