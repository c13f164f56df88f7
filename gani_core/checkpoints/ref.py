"""A checkpoint spec, parsed and resolved once: :class:`CheckpointRef`.

A spec is what users type after ``--checkpoint``:

    builtin                  the trained built-in generator (shapes, 64 px), shipped in gani_core/weights/
    builtin-random[:RES]     a seeded, untrained built-in generator of RES px (64 by default)
    PATH                     a local NVIDIA .pkl, rosinality .pt or gani .safetensors (``file://`` allowed); a
                             relative path is recorded absolute, so that a run can be edited from another folder
    s3://bucket/key          any fsspec URI: downloaded once per machine into the cache (:func:`cache_dir`)

:func:`resolve_checkpoint` parses the spec and hashes what it names, without loading a generator: the flow
resolves once and hands the small, picklable reference to its tasks; each worker then loads it
(:meth:`CheckpointRef.load`). :func:`check_format` refuses, from a few bytes and without loading weights, a file
that is no checkpoint at all (a text file named ``g.pkl``) or one cut short: said once, up front, rather than by
every worker for every image. The sha256 is the checkpoint part of every result's key (the resume rule):

- a file or URI: the sha256 of its bytes (a URI's download is checked against it on every machine);
- ``builtin``: of the shipped weights file's and its factor probe's hashes (the probe measures edit_accuracy);
- ``builtin-random:RES``: its definition (resolution, seed, and the source of the code that computes the weights),
  not its weights: they are computed, and their last bits change with the number of threads that computed them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

import gani_core
from gani_core import storage
from gani_core.checkpoints import builtin
from gani_core.errors import CheckpointError
from gani_core.networks import Generator

# Where a spec points (CheckpointRef.origin): the shipped weights, a computed generator, a local file, a URI.
Origin = Literal["builtin", "builtin-random", "file", "uri"]

_BUILTIN = re.compile(r"builtin(?::(\d+))?")
_BUILTIN_RANDOM = re.compile(r"builtin-random(?::(\d+))?")
# The code that computes builtin-random's weights: its hash changes when they may change.
_RANDOM_SOURCES = (Path(builtin.__file__), Path(builtin.__file__).parents[1] / "networks.py")


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``$GANI_CACHE_DIR``, else ``~/.cache/gani``."""
    return Path(os.environ.get("GANI_CACHE_DIR") or Path.home() / ".cache" / "gani")


@dataclass(frozen=True)
class CheckpointRef:
    spec: str                   # as given; a relative path made absolute (rows record it, read from any folder)
    origin: Origin              # where the spec points: builtin, builtin-random, file or uri
    location: str               # builtin: the weights file; builtin-random: ""; file: its path; uri: the URI
    resolution: int | None      # known without loading for the built-in generators, else None
    sha256: str                 # the checkpoint part of every result's key
    label: str                  # what tables and previews call it

    def local_path(self) -> Path:
        """The file ``load_generator`` reads: a URI is downloaded into the cache once per machine and checked
        against :attr:`sha256` (an object replaced since the run started is refused, not mixed in)."""
        if self.origin == "builtin-random":
            raise CheckpointError(f"{self.spec}: a computed generator has no file")
        if self.origin != "uri":
            return Path(self.location)
        target = _cached_file(self.sha256, self.location)
        if not target.is_file():
            digest = _download(self.location, target)
            if digest != self.sha256:
                target.unlink(missing_ok=True)
                raise CheckpointError(f"{self.location} changed since this run resolved it (sha256 {digest[:12]}, "
                                      f"expected {self.sha256[:12]}); start the run again")
        return target

    def load(self, device: str | torch.device = "cpu") -> Generator:
        """The generator, in evaluation mode on ``device`` (read as data, never as code)."""
        from gani_core.checkpoints import load_generator

        if self.origin in ("builtin", "builtin-random"):
            return load_generator(self.spec, device=device)
        return load_generator(self.local_path(), device=device)


def parse_spec(spec: str | Path) -> tuple[Origin, str, int | None]:
    """The one parse of a checkpoint spec: (origin, location, resolution); see the module docstring.

    Raises :class:`CheckpointError` for a built-in resolution that does not exist or missing built-in weights.
    Local paths and URIs are not checked here.
    """
    spec = str(spec)
    if m := _BUILTIN.fullmatch(spec):
        if m.group(1) and int(m.group(1)) != builtin.TRAINED_RESOLUTION:
            raise CheckpointError(f"{spec}: the trained built-in generator is {builtin.TRAINED_RESOLUTION} px; "
                                  f"builtin-random:{m.group(1)} is a seeded untrained one of that size")
        for file, what in ((builtin.TRAINED_FILE, "the trained weights are"),
                           (builtin.PROBE_FILE, "its factor probe is")):
            if not file.is_file():
                raise CheckpointError(f"builtin: {what} missing ({file}); reinstall gani, or use builtin-random")
        return "builtin", str(builtin.TRAINED_FILE), builtin.TRAINED_RESOLUTION
    if m := _BUILTIN_RANDOM.fullmatch(spec):
        res = int(m.group(1) or builtin.BUILTIN_RESOLUTION)
        if res < 4 or res & (res - 1):
            raise CheckpointError(f"{spec}: the resolution must be a power of two of at least 4, got {res}")
        return "builtin-random", "", res
    if "://" in spec and not spec.startswith("file://"):
        return "uri", spec, None
    return "file", str(Path(spec.removeprefix("file://")).expanduser()), None


def resolve_checkpoint(spec: str | Path) -> CheckpointRef:
    """Parse ``spec`` and hash what it names (see the module docstring); no generator is loaded.

    Raises :class:`CheckpointError` for a missing or empty file, an unreachable URI, or a built-in resolution
    that does not exist. Whether the file is a readable generator is found out where it is loaded.
    """
    spec = str(spec)
    origin, location, res = parse_spec(spec)
    if origin == "builtin":
        path = Path(location)
        digest = hashlib.sha256((_file_sha256(path) + _file_sha256(builtin.PROBE_FILE)).encode()).hexdigest()
        return CheckpointRef(spec, origin, location, res, digest, _native_label(path) or "built-in")
    if origin == "builtin-random":
        assert res is not None
        return CheckpointRef(spec, origin, "", res, _random_sha256(res), builtin.builtin_config(res).label)
    if origin == "uri":
        return _resolve_uri(spec)
    path = Path(location)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {spec}" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{spec}: the checkpoint file is empty")
    if not path.is_absolute():      # rows record the spec: a relative one would name another file from another cwd
        spec = os.path.abspath(path)
    path = path.resolve()
    return CheckpointRef(spec, origin, str(path), None, _file_sha256(path), _native_label(path) or path.name)


def recorded_checkpoint(spec: str, sha256: str) -> CheckpointRef:
    """The checkpoint a run's rows name (their ``checkpoint`` and ``checkpoint_sha256``), which must still be that
    checkpoint: another file under the same name would give deltas to weights they were not made for. Raises
    CheckpointError when it cannot be found (a relative path recorded before paths were made absolute says so) or
    holds other bytes."""
    try:
        ckpt = resolve_checkpoint(spec)
    except CheckpointError as exc:
        origin, location, _ = parse_spec(spec)
        if origin == "file" and not Path(location).is_absolute():
            raise CheckpointError(f"{exc}: the run recorded this path relative to the folder it was run from; run "
                                  "this command from that folder") from None
        raise
    if ckpt.sha256 != sha256:
        raise CheckpointError(f"{spec} is not the checkpoint this run tuned (sha256 {ckpt.sha256[:12]}, the run's "
                              f"{sha256[:12]}); its deltas would not apply")
    return ckpt


FORMATS = "an NVIDIA network pickle (.pkl), a rosinality .pt or a gani .safetensors"
_ZIP_MAGIC = b"PK\x03\x04"                # torch.save's zip format
_ZIP_END = b"PK\x05\x06"                  # a zip's end of central directory, in its last 64 KiB + 22 bytes
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."   # torch.save's legacy (non-zip) format
_MAX_HEADER = 100 << 20                    # a safetensors JSON header larger than this is not one


def check_format(ref: CheckpointRef) -> None:
    """Refuse, in one line, a checkpoint file that is not one of the formats :func:`load_generator` reads, or one
    visibly cut short: the magic bytes of each format, a safetensors header against the file's size, a zip's end
    record, a pickle's final STOP opcode. Reads a few bytes (a safetensors header); never loads weights, so a file
    that passes may still fail to load (a hostile pickle is refused by the loader). Built-ins pass.

    Raises :class:`CheckpointError`. The flow calls it after :func:`resolve_checkpoint`, before anything starts.
    """
    if ref.origin in ("builtin", "builtin-random"):
        return
    problem = format_problem(ref.local_path())
    if problem:
        raise CheckpointError(f"{ref.spec}: {problem}")


def format_problem(path: Path) -> str | None:
    """What is wrong with the checkpoint file ``path`` as far as its first and last bytes tell, else None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(32)
        if head.startswith(_ZIP_MAGIC):
            f.seek(max(0, size - (1 << 16) - 22))
            return None if _ZIP_END in f.read() else \
                f"a torch zip file without its end record: truncated ({size} bytes)"
        if head.startswith(_LEGACY_TORCH_MAGIC):
            return None
        if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:       # a pickle (protocol 2 to 5)
            f.seek(size - 1)
            return None if f.read(1) == b"." else f"a pickle cut short (no STOP opcode at its end, {size} bytes)"
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if head[8:9] == b"{" and 2 <= n <= min(size - 8, _MAX_HEADER):
            f.seek(8)
            return _safetensors_problem(f.read(n), size)
    return f"not a checkpoint this tool reads (it starts with {head[:16]!r}; expected {FORMATS})"


def _safetensors_problem(header: bytes, size: int) -> str | None:
    """A safetensors file's problem from its JSON header: unreadable, or describing more bytes than there are."""
    try:
        entries = json.loads(header)
        end = max((int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"corrupt safetensors file (unreadable header: {type(exc).__name__}: {exc})"
    expected = 8 + len(header) + end
    if size < expected:
        return f"corrupt safetensors file (truncated: its header describes {expected} bytes, the file has {size})"
    return None


def _resolve_uri(uri: str) -> CheckpointRef:
    try:
        fs, path = storage.resolve(uri)
        info = storage.with_retries("read", uri, lambda: fs.info(path))
    except (OSError, ValueError, ImportError) as exc:
        raise CheckpointError(f"checkpoint {uri}: cannot be read ({type(exc).__name__}: {exc})") from exc
    # Which content this URI held when last downloaded here (keyed by its ETag and size): no second download.
    version = f"{uri}\n{info.get('ETag') or info.get('etag') or ''}:{info.get('size')}"
    pointer = cache_dir() / "checkpoints" / "by-uri" / hashlib.sha256(version.encode()).hexdigest()[:32]
    digest = pointer.read_text().strip() if pointer.is_file() else ""
    if not digest or not _cached_file(digest, uri).is_file():
        tmp = _cached_file("download", uri).with_suffix(f".{os.getpid()}.part")
        digest = _download(uri, tmp)
        target = _cached_file(digest, uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        storage.write_bytes(pointer, digest.encode())
    target = _cached_file(digest, uri)
    return CheckpointRef(uri, "uri", uri, None, digest, _native_label(target) or Path(path).name)


def _cached_file(digest: str, uri: str) -> Path:
    return cache_dir() / "checkpoints" / digest[:32] / Path(storage.resolve(uri)[1]).name


def _download(uri: str, target: Path) -> str:
    """Copy ``uri`` to ``target`` atomically; the sha256 of its bytes."""
    try:
        data = storage.read_bytes(uri)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {uri}: download failed ({type(exc).__name__}: {exc})") from exc
    storage.write_bytes(target, data)
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _hash_file(str(path), st.st_size, st.st_mtime_ns)


@functools.cache
def _hash_file(path: str, size: int, mtime_ns: int) -> str:     # size and mtime: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _random_sha256(resolution: int) -> str:
    digest = hashlib.sha256(f"gani-builtin-random:{resolution}:seed={builtin.BUILTIN_SEED}:"
                            f"{gani_core.__version__}".encode())
    for source in _RANDOM_SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _native_label(path: Path) -> str | None:
    """The label in a gani .safetensors file's config (read from its header only), else None."""
    from gani_core.checkpoints.native import is_safetensors, read_metadata

    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            n = int.from_bytes(head, "little")
            if not 2 <= n <= 100 << 20:
                return None
            data = head + f.read(n)
        if not is_safetensors(data + b"\0"):
            return None
        return json.loads(read_metadata(data).get("config", "{}")).get("label") or None
    except (OSError, ValueError, AttributeError):
        return None
