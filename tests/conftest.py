"""What the tests share: paths, a free port, and session-wide fixtures built once for every file.

The session fixtures are shared between test files, so they are read-only: a test that needs to change a
generator, a folder or a tensor copies it first (``copy.deepcopy(G)``, ``shutil.copytree``, ``.clone()``).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

# No telemetry from the orchestration tools, in tests as in the Makefile.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest
import torch

from gani_core import Generator, build_builtin, save_generator
from gani_core.images import load_image

# One intra-op thread in the test process. The tests' tensors are small (32-256 px), and on a 2-core machine
# whose other core is busy (a Dask worker, a server, a second job) torch's second thread spin-waits: a 128 x 128
# float64 SVD took 0.59 s with two threads against 0.002 s with one, and tests/test_inversion.py 134 s against
# 12 s. Child processes (servers, Dask workers, deployments) choose their own.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples" / "photos"

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "retina", "camera")   # EXAMPLES/NAME.jpg
PHOTO_PAIR = ("astronaut.jpg", "coffee.jpg")    # the two photos of the small dataset runs
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature and nothing decodable after it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def g32() -> Generator:
    """The seeded, untrained 32 px built-in generator (``builtin-random:32``), in eval mode, no gradients."""
    return build_builtin(32)


@pytest.fixture(scope="session")
def g32_file(g32: Generator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``g32`` saved as a gani ``.safetensors`` checkpoint: the file a flow or a CLI run is given."""
    return save_generator(g32, tmp_path_factory.mktemp("generator") / "g32.safetensors")


@pytest.fixture(scope="session")
def photo_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding astronaut.jpg and coffee.jpg, copied from EXAMPLES."""
    folder = tmp_path_factory.mktemp("photo-pair")
    for name in PHOTO_PAIR:
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def photos_with_broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding astronaut.jpg, coffee.jpg and broken.png (a corrupt PNG: one failed row per method)."""
    folder = tmp_path_factory.mktemp("photos-with-broken")
    for name in PHOTO_PAIR:
        shutil.copy(EXAMPLES / name, folder / name)
    (folder / "broken.png").write_bytes(BROKEN_PNG)
    return folder


@pytest.fixture(scope="session")
def example_photos() -> torch.Tensor:
    """The six example photos in PHOTO_NAMES order, [6, 3, 256, 256] float32 in [0, 1]."""
    return torch.stack([load_image(EXAMPLES / f"{name}.jpg") for name in PHOTO_NAMES])


S3_BUCKET = "gani-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server) holding the empty bucket S3_BUCKET; a boto3 client.

    Credentials, region and endpoint are set in the environment, as for any s3fs / boto user
    (``AWS_ENDPOINT_URL`` points botocore at the server), before anything starts workers that inherit them;
    the checkpoint download cache (``GANI_CACHE_DIR``) is a fresh folder.
    """
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                            "GANI_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3")
        client.create_bucket(Bucket=S3_BUCKET)
        try:
            yield client
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()
