"""What the tests share: paths, and the fixtures built once for every file (session-wide) or once per module.

The session fixtures are shared between test files, so they are read-only: a test that needs to change a
generator, a folder or a tensor copies it first (``copy.deepcopy(G)``, ``shutil.copytree``, ``.clone()``).
Plain helpers that the benchmarks use too (ports, processes, S3, Prefect, Dask) are in tests/support/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from gani_core import Generator, build_builtin, save_generator
from gani_core.checkout import REPO
from gani_core.images import load_image

from .support.dask_cluster import local_cluster
from .support.prefect_api import services_environment, temporary_prefect_api
from .support.s3 import s3_service

if TYPE_CHECKING:
    from distributed import Client

# No telemetry from the orchestration tools (gani_core.telemetry, as in the Makefile), and time for the temporary
# Prefect API's first start: set before any test module imports Prefect, Dask or MLflow.
services_environment()

# One intra-op thread in the test process. The tests' tensors are small (32-256 px), and on a 2-core machine
# whose other core is busy (a Dask worker, a server, a second job) torch's second thread spin-waits: a 128 x 128
# float64 SVD took 0.59 s with two threads against 0.002 s with one, and tests/test_inversion.py 134 s against
# 12 s. Child processes (servers, Dask workers, deployments) choose their own.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = REPO / "examples" / "photos"

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "retina", "camera")   # EXAMPLES/NAME.jpg
PHOTO_PAIR = ("astronaut.jpg", "coffee.jpg")    # the two photos of the small dataset runs
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature and nothing decodable after it


def photo_folder(folder: Path, broken: bool = False) -> Path:
    """``folder`` holding PHOTO_PAIR copied from EXAMPLES, and broken.png (BROKEN_PNG) if ``broken``."""
    for name in PHOTO_PAIR:
        shutil.copy(EXAMPLES / name, folder / name)
    if broken:
        (folder / "broken.png").write_bytes(BROKEN_PNG)
    return folder


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
def factor_checkpoint(g32: Generator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``g32`` carrying two factor directions and a (seeded, untrained) factor probe that reads them, saved."""
    import copy

    from gani_core.factors import FactorEdits, FactorProbe

    G = copy.deepcopy(g32)
    directions = torch.randn([2, G.w_dim], generator=torch.Generator().manual_seed(1))
    G.factor_edits = FactorEdits(("hue", "size"), directions / directions.norm(dim=1, keepdim=True),
                                 torch.tensor([1.5, 1.0]), torch.tensor([0.9, 0.8]))
    torch.manual_seed(2)
    G.factor_probe = FactorProbe(("hue", "size"), resolution=32).eval().requires_grad_(False)
    return save_generator(G, tmp_path_factory.mktemp("factor-generator") / "g32-factors.safetensors")


@pytest.fixture
def no_dlib(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """dlib made unimportable in this process, the loaded models forgotten (and again afterwards)."""
    import sys

    from gani_core.faces import models

    cached = (models.dlib, models._models_dir, models.face_detector, models.landmark_predictor,
              models.face_recognizer)
    for function in cached:
        function.cache_clear()
    monkeypatch.setitem(sys.modules, "dlib", None)
    yield
    monkeypatch.undo()
    for function in cached:
        function.cache_clear()


@pytest.fixture(scope="session")
def photo_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding astronaut.jpg and coffee.jpg, copied from EXAMPLES."""
    return photo_folder(tmp_path_factory.mktemp("photo-pair"))


@pytest.fixture(scope="session")
def photos_with_broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding astronaut.jpg, coffee.jpg and broken.png (a corrupt PNG: one failed row per method)."""
    return photo_folder(tmp_path_factory.mktemp("photos-with-broken"), broken=True)


@pytest.fixture(scope="session")
def example_photos() -> torch.Tensor:
    """The six example photos in PHOTO_NAMES order, [6, 3, 256, 256] float32 in [0, 1]."""
    return torch.stack([load_image(EXAMPLES / f"{name}.jpg") for name in PHOTO_NAMES])


@pytest.fixture(scope="session")
def G(g32: Generator) -> Generator:
    """``g32`` under the name the library gives a generator, for the tests of one generator's inversion, tuning,
    deltas and editing; read-only. (test_shapes.py's own ``G`` is the trained built-in.)"""
    return g32


S3_BUCKET = "gani-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server) holding the empty bucket S3_BUCKET; a boto3 client.

    Credentials, region and endpoint are set in the environment, as for any s3fs / boto user
    (``AWS_ENDPOINT_URL`` points botocore at the server), before anything starts workers that inherit them;
    the checkpoint download cache (``GANI_CACHE_DIR``) is a fresh folder (tests/support/s3.py: s3_service).
    """
    import boto3

    with s3_service(S3_BUCKET, tmp_path_factory.mktemp("cache")):
        yield boto3.client("s3")


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """Prefect's temporary local API for a module's tests; its URL."""
    with temporary_prefect_api() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(prefect_api: str) -> Iterator[Client]:
    """A 2-worker LocalCluster (processes, one thread each) whose workers report to the test Prefect API; a client
    of it (``cluster.scheduler.address`` is what a flow's ``dask_address`` takes). Its workers inherit the
    environment as it is when it starts: a module that sets one for them makes ``cluster`` depend on that."""
    with local_cluster(prefect_api) as client:
        yield client
