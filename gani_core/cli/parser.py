"""The ``gani`` argument parser: every command, option and default, without importing torch.

``gani --help``, each command's ``--help`` and a mistyped option answer in a fraction of a second: the defaults
come from gani_core.defaults, and each command names the module (gani_core.cli.NAME) that runs it, imported only
then. ``check``, where a command sets one, checks options against each other, still before any import.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import NoReturn

from gani_core import defaults
from gani_core.cli.common import EXIT_CODES
from gani_core.errors import GaniError

# `gani shapes`'s two seeds: of the plain in-domain images (examples/shapes/ holds seed 2026's), and of a kind's
# split stream (out_of_domain.sample_kind; the benchmark's sets use 0).
PLAIN_SHAPES_SEED = 2026
SPLIT_SEED = 0
IN_DOMAIN = "in-domain"     # gani_core.shapes.out_of_domain.IN_DOMAIN (tests/test_cli.py checks they agree)

CHECKPOINTS = "builtin, builtin-random[:RES], an NVIDIA .pkl, a rosinality .pt or a gani .safetensors: a path or a URI"


def _steps(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"a number of steps is a whole number of at least 0, got {value!r}")
    return int(value)


def _tune_steps(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"tuning steps are a whole number of at least 1, got {value!r}; with no tuning, gani and pti are their "
            "pivot alone: --method w (or wplus) computes that")
    return int(value)


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {value!r}")
    return int(value)


def _resolution(value: str) -> int:
    if not value.isdigit() or int(value) < 4 or int(value) & (int(value) - 1):
        raise argparse.ArgumentTypeError(f"a generator's resolution: a power of two of at least 4 (4, 8, ..., 256, "
                                         f"512, 1024), got {value!r}")
    return int(value)


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"a batch size is a whole number of at least 1, or auto; got {value!r}")
    return int(value)


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"a finite number, got {value!r}")
    return number


def _non_negative(value: str) -> float:
    number = _number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"a number of at least 0 (0: off), got {value!r}")
    return number


def _positive(value: str) -> float:
    number = _number(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"a number above 0, got {value!r}")
    return number


def _check_invert(args: argparse.Namespace) -> None:
    """The tuning options need a method that tunes: with only w and wplus they would be ignored."""
    given = [name for name, value in (("--tune-steps", args.tune_steps), ("--tune-lr", args.tune_lr),
                                      ("--reg-weight", args.reg_weight)) if value is not None]
    if given and not set(args.method) & set(defaults.TUNING_METHODS):
        verb = "applies" if len(given) == 1 else "apply"
        raise GaniError(f"{', '.join(given)} {verb} to {' and '.join(defaults.TUNING_METHODS)}, the methods that "
                        f"tune the generator; --method {' '.join(args.method)} only finds a pivot")


def _epilog() -> str:
    """Where a checkpoint may come from, and the exit codes, wrapped for an 80-column terminal."""
    codes = "\n".join(textwrap.fill(meaning, 78, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7)
                      for code, meaning in EXIT_CODES.items())
    return (f"{_fill(f'Every CHECKPOINT is {CHECKPOINTS}.')}\n\nexit codes (every command):\n{codes}\n\n"
            "`gani COMMAND --help` describes a command; README.md and docs/ say more.")


def _fill(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 78)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and the epilog as written (their line breaks are chosen); each command on one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse measures the commands' names 2 columns less indented than it prints them: the longest one
            # (train-builtin) would get a line of its own.
            self._action_max_length += 2


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (argparse prints the usage block first): the usage is one
    ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gani", formatter_class=_Formatter, epilog=_epilog(),
        description=_fill("Invert images into a StyleGAN2 generator (GANI, and the baselines PTI, W+ and W), and "
                          "the tools around it."))
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for add in (_add_invert, _add_align, _add_show, _add_export, _add_edit, _add_metrics, _add_info, _add_render,
                _add_shapes, _add_train_builtin):
        add(sub)
    return parser


def _command(sub: argparse._SubParsersAction, name: str, help: str, description: str,
             module: str) -> argparse.ArgumentParser:
    """A command's parser: ``help`` is its line in ``gani --help``, ``description`` heads its own --help."""
    p = sub.add_parser(name, help=help, description=_fill(description), formatter_class=_Formatter)
    p.set_defaults(module=module, check=None)
    return p


def _add_invert(sub: argparse._SubParsersAction) -> None:
    methods = defaults.METHODS
    tuning = " and ".join(defaults.TUNING_METHODS)
    p = _command(sub, "invert", "invert images into a generator (gani, pti, wplus, w): a run",
                 "Invert each image with each --method into the run folder --out: a row per image and method\n"
                 "(metrics.parquet, summary.json), the tuned weights' deltas and previews. It resumes: results\n"
                 "already in --out for the same image, checkpoint and configuration are kept. An image that cannot\n"
                 "be read gets a failed row with the reason (exit code 1); the others complete.", "invert")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files (png, jpg, ...), or folders of them: "
                   "local paths or fsspec URIs (s3://bucket/prefix)")
    p.add_argument("--checkpoint", default="builtin",
                   help="builtin, builtin-random[:RES], a checkpoint file or its URI (s3://bucket/g.pkl)")
    p.add_argument("--method", nargs="+", default=["gani"], choices=methods,
                   help="one or more methods, each run on every image (default: gani)")
    p.add_argument("--out", required=True,
                   help="output folder or URI (s3://bucket/prefix); results already there for the same image, "
                        "checkpoint and configuration are kept")
    p.add_argument("--pivot-steps", type=_steps, default=None,
                   help=f"pivot optimisation steps (default: {defaults.PIVOT_STEPS})")
    p.add_argument("--tune-steps", type=_tune_steps, default=None,
                   help=f"generator tuning steps of {tuning}, at least 1 (default: {defaults.TUNE_STEPS})")
    p.add_argument("--tune-lr", type=_positive, default=None,
                   help=f"tuning learning rate of {tuning} (default: per method)")
    p.add_argument("--reg-weight", type=_non_negative, default=None,
                   help=f"weight of {tuning}'s regulariser, which keeps renders of latents near the pivot as the "
                        f"original generator made them; 0: off (default: gani {defaults.GANI_REG_WEIGHT:g}, pti "
                        f"{defaults.PTI_REG_WEIGHT:g} as in PTI)")
    p.add_argument("--directions", default=None,
                   help=".npy of edit directions in W, [K, w_dim] or [K, num_ws, w_dim] (default: seeded random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_batch_size, default=1, metavar="K|auto",
                   help="images inverted together, one forward and backward for all per step (default: 1); auto: "
                        f"as many as the GPU's free memory holds, {defaults.CPU_BATCH_SIZE} on a CPU")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", default="fp32", choices=defaults.PRECISIONS,
                   help="bf16: mixed precision (autocast) for the optimisation, for GPUs; on a CPU it runs, "
                        "slower (default: fp32)")
    p.add_argument("--align", default=None, choices=defaults.ALIGNMENTS,
                   help="ffhq: align each image's largest face the FFHQ way (dlib's 68 landmarks) at the "
                        "generator's resolution before inverting it; the aligned face is what is inverted, measured "
                        "and previewed, the row records the alignment; an image without a face fails (no face "
                        "found); measures id_similarity (default: none, centre crop). Needs the faces extra")
    p.add_argument("--identity", action="store_true",
                   help="the images are FFHQ-aligned faces already (gani align's): measure id_similarity, dlib's "
                        "face-descriptor cosine of input and render (not comparable with published ArcFace IDs). "
                        "Needs the faces extra")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(check=_check_invert)


def _add_align(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "align", "align faces the FFHQ way (dlib's 68 landmarks)",
                 "Align the largest face of each image the FFHQ way (dlib's 68 landmarks: the eyes and mouth define an "
                 "oriented square, cropped, rotated and resized) into --out: NAME.png per image, and alignment.parquet "
                 "with what was found (faces seen, landmarks, quad) or why not. It resumes: an output already there "
                 "for the same image bytes and resolution is kept. Each image without a face is one line on stderr "
                 "(exit code 1); the others complete. Needs the faces extra: pip install -e '.[faces]'.", "align")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files (png, jpg, ...), or folders of them: "
                   "local paths or fsspec URIs (s3://bucket/prefix)")
    p.add_argument("--out", required=True, help="output folder or URI (s3://bucket/prefix); outputs already there "
                   "for the same image bytes and resolution are kept")
    p.add_argument("--resolution", type=_resolution, default=1024,
                   help="side of the aligned images in px: the generator's resolution, a power of two of at least 4 "
                        "(default: 1024, FFHQ's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "show", "a run's table, its configurations and per-method means",
                 "Print a run folder's rows (one per image and method), what each configuration is (and, for a\n"
                 "method run with several, which options differ), and the means per method and configuration.\n"
                 "Reads a run that was interrupted or is still running, and says so.", "show")
    p.add_argument("run", metavar="RUN", help="the --out of a run")


def _add_export(sub: argparse._SubParsersAction) -> None:
    tuned = ", else ".join(defaults.TUNING_METHODS)
    p = _command(sub, "export", "tuned generators (.safetensors, rosinality .pt) and pivot latents (.npy)",
                 "Write the generator a tuning method made for an image (the run's checkpoint with the image's\n"
                 "weight deltas applied): a gani .safetensors file (its pivot latent in the metadata) or, with\n"
                 "--format rosinality, the .pt of g_ema and latent_avg that e4e, HyperStyle, ReStyle and StyleCLIP\n"
                 "load; and, with --latent, the pivot latent as a [num_ws, w_dim] float32 .npy. --all exports\n"
                 "every image into the folder --out, keeping what an earlier export of the same result wrote.\n"
                 "IMAGE_ID comes right after RUN.", "export")
    p.add_argument("run", metavar="RUN", help="the --out of a run")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("image_id", nargs="?", metavar="IMAGE_ID", help="the image's id (see `gani show`)")
    which.add_argument("--all", action="store_true",
                       help="every image with a successful result: --out DIR gets IMAGE_ID.METHOD.safetensors (.pt), "
                            "IMAGE_ID.METHOD.npy with --latent, and IMAGE_ID.METHOD.json (what they were made from)")
    p.add_argument("--method", default=None, choices=defaults.METHODS,
                   help=f"which method's result (default: {tuned}: the first with a successful result; for a "
                        f"latent alone, {', '.join(defaults.METHODS)}): w and wplus tune nothing, only their latent "
                        "exports")
    p.add_argument("--format", default="safetensors", choices=("safetensors", "rosinality"),
                   help="the generator's file: safetensors (gani's, .safetensors) or rosinality (.pt) "
                        "(default: safetensors)")
    p.add_argument("--out", default=None,
                   help="the generator file to write (.safetensors, or .pt for rosinality); with --all, the folder")
    p.add_argument("--latent", nargs="?", const="", default=None, metavar="FILE.npy",
                   help="also (or, without --out, only) write the pivot latent, [num_ws, w_dim] float32; without "
                        "FILE, beside --out (F.npy); with --all, DIR/IMAGE_ID.METHOD.npy")


def _add_edit(sub: argparse._SubParsersAction) -> None:
    tuned = ", else ".join(defaults.TUNING_METHODS)
    p = _command(sub, "edit", "a run's images edited along latent directions, side by side",
                 "Move each image's pivot along each --direction at each of --strengths and render it through the\n"
                 "image's tuned generator and through the original one: a labelled strip per image and direction\n"
                 "(original above, tuned below), and edits.parquet (how far the tuned edit is from the original's).\n"
                 "It resumes: strips already in --out for the same result, direction and strengths are kept; other\n"
                 "strengths of the same image and direction replace them (edit into another --out to keep both).",
                 "edit")
    p.add_argument("run", metavar="RUN", help="the --out of a run (a folder or URI)")
    p.add_argument("image_ids", nargs="*", metavar="IMAGE_ID",
                   help="images to edit (see `gani show`; default: every image with a successful result)")
    p.add_argument("--direction", action="append", required=True, metavar="SPEC",
                   help="factor:NAME (a factor direction the generator carries), pca:K (the K-th principal "
                        "direction of W) or FILE.npy (a path or URI); repeat for more (the same spec twice counts "
                        "once)")
    p.add_argument("--strengths", nargs="+", action="extend", required=True, metavar="S",
                   help="edit strengths in each direction's unit (factor: steps, pca: sigmas, .npy: W units), "
                        "e.g. -3 -1.5 0 1.5 3; at most 1000 either way; a set: repeats add up (--strengths -1 "
                        "--strengths 1), the strip goes from the most negative to the most positive whatever the "
                        "order given")
    p.add_argument("--method", default=None, choices=defaults.METHODS,
                   help=f"which method's results (default: {tuned}: the first with a successful result); w and "
                        "wplus edit the pivot through the original generator")
    p.add_argument("--layers", default=None, metavar="A-B",
                   help="edit these style inputs only, both ends included: 0-5, 3, 4- (default: all); another "
                        "direction, named with its layers (factor-hue.L0-5), so it does not replace the edit of all")
    p.add_argument("--raw", action="store_true", help="a .npy direction as stored, not normalised to length 1 (factor: "
                   "and pca: directions keep their steps and sigmas: refused without a .npy direction)")
    p.add_argument("--out", default=None, help="output folder or URI (default: RUN/edits)")
    p.add_argument("--gif", action="store_true", help="also an animated GIF per image and direction (the tuned edit)")
    p.add_argument("--batch-size", type=_batch_size, default="auto", metavar="K|auto",
                   help="images edited together (default: auto: as many as the GPU's free memory holds, "
                        f"{defaults.CPU_BATCH_SIZE} on a CPU)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "metrics", "mse, psnr, ms_ssim, lpips, lpips_vgg (and id_similarity) of two images",
                 "Compare two images of equal size with the metrics a run reports (docs/method.md, \"Metrics\"),\n"
                 "and id_similarity when both hold a face (with the faces extra).", "metrics")
    p.add_argument("a", metavar="A", help="first image")
    p.add_argument("b", metavar="B", help="second image")
    p.add_argument("--aligned", action="store_true",
                   help="both are FFHQ-aligned faces (gani align's, or a run's renders): id_similarity reads a face "
                        "the detector misses at its aligned place, when it finds the face of the other image")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="torch device for LPIPS (default: cpu)")


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "info", "what a checkpoint holds, as JSON",
                 "Describe what a checkpoint holds, as JSON.", "info")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINTS)


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "render", "a grid of seeded samples of a generator (.png, .jpg, .webp)",
                 "Render --count samples of a generator, seeds --seed, --seed+1, ..., side by side with a caption.",
                 "render")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=CHECKPOINTS)
    p.add_argument("--out", required=True, help="image file to write: .png, .jpg/.jpeg or .webp")
    p.add_argument("--count", type=_positive_int, default=8, help="number of samples, at least 1 (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="first seed; samples use seed, seed+1, ... (default: 0)")
    p.add_argument("--truncation", type=_number, default=1.0, help="truncation psi (default: 1.0)")
    p.add_argument("--noise-mode", default="const", choices=["const", "none", "random"])
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _add_shapes(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "shapes", "images of the shapes domain (or out of it), their factors",
                 "Write seeded images of the built-in generator's domain (a coloured square over a lit\n"
                 "background), or of a kind out of it (--kind), and their true factors in factors.json (merged\n"
                 "with what the folder holds).", "shapes")
    p.add_argument("out", nargs="?", metavar="OUT", help="folder or URI to write PNGs and factors.json to")
    p.add_argument("--count", type=_positive_int, default=8)
    p.add_argument("--kind", default=IN_DOMAIN,
                   help="in-domain (default), an out-of-domain kind or a near-domain control (--list-kinds; "
                        "docs/benchmark.md); writes KIND-SPLIT-NNN.png")
    p.add_argument("--split", choices=("dev", "test"), default=None,
                   help="the kind's seed stream: choose on dev, report on test (default: test). In-domain "
                        "without --split writes shapes-SEED-NNN.png, as before")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of the plain in-domain images, shapes-SEED-NNN.png (default: {PLAIN_SHAPES_SEED}; "
                        "the training data uses other seeds)")
    p.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of a kind's split stream, with --kind or --split (default: {SPLIT_SEED}, the "
                        "benchmark's)")
    p.add_argument("--resolution", type=_positive_int, default=64)
    p.add_argument("--list-kinds", action="store_true", help="print the kinds and what each is, then exit")


def _add_train_builtin(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "train-builtin", "train the built-in generator (docs/builtin.md)",
                 "Train the built-in generator on the shapes domain, then fit its factor probe and edit\n"
                 "directions and write a quality report (docs/builtin.md). A rerun resumes.", "train_builtin")
    p.add_argument("--out", default="runs/train-builtin", help="training folder; a rerun resumes from it")
    p.add_argument("--resolution", type=_positive_int, default=64, help="image resolution (default: 64)")
    p.add_argument("--batch", type=_positive_int, default=32, help="images per step (default: 32)")
    p.add_argument("--kimg", type=_non_negative, default=400.0,
                   help="training length in thousands of images (default: 400)")
    p.add_argument("--r1-gamma", type=_non_negative, default=0.05, help="R1 regularisation weight (default: 0.05)")
    p.add_argument("--pl-weight", type=_non_negative, default=2.0,
                   help="path-length regularisation, 0 = off (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-minutes", type=_non_negative, default=None, help="stop (resumably) after this many minutes")
    p.add_argument("--fit-minutes", type=_non_negative, default=None,
                   help="measure the training speed first and set --kimg to what fits in this many minutes")
    p.add_argument("--no-finish", action="store_true",
                   help="skip the factor probe, edit directions and quality report after training")
    p.add_argument("--finish-only", action="store_true",
                   help="do not train: run the finishing stages on the folder's G_ema.safetensors")
    p.add_argument("--probe-steps", type=_positive_int, default=4000, help="training steps of the factor probe")
    p.add_argument("--install", action="store_true",
                   help="copy the finished generator and probe into gani_core/weights/ (what `builtin` loads)")
