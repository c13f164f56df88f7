"""The ``gani`` command line: invert images into a generator without an orchestrator, and the tools around it.

    gani invert IMAGES... --out RUN     invert images with gani and the baselines into a run folder (resumes);
                                        --align ffhq aligns faces first, --identity measures id_similarity
    gani align IMAGES... --out DIR      align faces the FFHQ way (dlib's 68 landmarks): NAME.png each and
                                        alignment.parquet (resumes)
    gani show RUN                       a run's table and per-method means
    gani export RUN IMAGE_ID --out F    one image's tuned generator as a gani .safetensors checkpoint
    gani edit RUN --direction D --strengths S...
                                        a run's images edited along latent directions, tuned and original
                                        generators side by side: strips, GIFs, edits.parquet (resumes)
    gani metrics A B                    mse, psnr, ms_ssim, lpips, lpips_vgg of two images (and id_similarity of
                                        two faces)
    gani info CHECKPOINT                what a checkpoint holds, as JSON
    gani render CHECKPOINT --out F      a grid of seeded samples
    gani shapes OUT                     images of the built-in generator's domain (or, --kind, out of it) with
                                        their true factors
    gani train-builtin                  train the built-in generator (docs/builtin.md)

Every command ends with one of the exit codes of :data:`EXIT_CODES`, and every failure is one line on stderr, never
a traceback. The parser (gani_core.cli.parser) imports no torch: help and argument errors answer at once; each
command's module (gani_core.cli.NAME) imports what it needs when it runs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from gani_core.cli.common import EXIT_CODES, Interrupted
from gani_core.cli.parser import build_parser
from gani_core.errors import GaniError

INTERRUPTED = 130           # the exit code of Ctrl-C (EXIT_CODES)

__all__ = ["EXIT_CODES", "build_parser", "console", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``gani`` command; its exit code (argparse's own errors exit 2 through SystemExit)."""
    command = "gani"
    try:
        args = build_parser().parse_args(argv)
        command = f"gani {args.command}"
        check = getattr(args, "check", None)
        if check is not None:
            check(args)         # torch-free checks across options, before the command's imports
        return importlib.import_module(f"gani_core.cli.{args.module}").run(args)
    except Interrupted as exc:
        return _say(f"{command}: interrupted: {exc}", INTERRUPTED)
    except KeyboardInterrupt:
        return _say(f"{command}: interrupted", INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`gani info builtin | head`): nothing left to say to it, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (GaniError, ValueError, OSError) as exc:
        # Bad usage or input: a missing file, an image or checkpoint that cannot be read, a value out of range, an
        # output that cannot be written (FileNotFoundError and the other OSErrors say which path).
        return _say(f"{command}: error: {exc}", 2)
    except Exception as exc:
        if os.environ.get("GANI_DEBUG"):
            raise
        return _say(f"{command}: failed: {type(exc).__name__}: {_one_line(exc)} (GANI_DEBUG=1 shows where)", 3)


def console() -> None:
    """The ``gani`` console script: :func:`main`, then the process ends at once with its code, its output flushed.
    Finalising the interpreter instead could stop a native thread pool mid-work: seen under load after Ctrl-C and,
    a few times in 18 runs, after a successful ``gani export --all`` (``terminate called without an active
    exception``, SIGABRT, exit 134 where 0 or 130 was due). Nothing is lost by not finalising: every file is written
    whole (temp + rename) before its command returns, and the commands hold no other resources."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):      # a reader gone (`gani info builtin | head`): nothing to flush to
            stream.flush()
    os._exit(code)


def _say(line: str, code: int) -> int:
    print(_one_line(line), file=sys.stderr)
    return code


def _one_line(text: object) -> str:
    """``text`` on one line: a message with line breaks (a library's) joined, its spaces otherwise kept."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"
