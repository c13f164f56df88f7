"""Typed errors raised by gani_core. The orchestration layers turn them into failed rows."""

import re


class GaniError(Exception):
    """Base class of every error gani_core raises on purpose."""


class CheckpointError(GaniError):
    """A checkpoint could not be read: missing, truncated, or not a StyleGAN2 generator."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asked to run code (an unknown global, a ``__reduce__`` to a callable) and was refused."""


class ImageError(GaniError):
    """An image could not be read: empty, truncated, not an image, or too large."""


class LpipsWeightsError(GaniError):
    """The pretrained LPIPS backbone weights are not installed; LPIPS is never computed without them."""


class DeltasError(GaniError):
    """A result's deltas file could not be read: truncated, overwritten, or not a deltas table."""


class InversionError(GaniError):
    """An image's optimisation diverged (a non-finite loss or pivot); the other images of its batch go on."""


class StorageAccessError(GaniError):
    """The storage refused who we are: no credentials, unknown or expired ones, or no permission. Permanent, so
    never retried (gani_core.storage): the message says what to set."""


def reason(exc: BaseException) -> str:
    """An error's message on one line, without Arrow's ``Could not open Parquet input source '<Buffer>':`` (which
    names no file: the caller names it)."""
    return re.sub(r"^.*'<Buffer>':\s*", "", " ".join(str(exc).split()))
