"""The defaults and names the ``gani`` command line shows before it does any work, defined once and torch-free.

``gani --help``, every subcommand's help and argument errors read these without importing torch (about 3 s);
gani_core.invert, pivot, tuning and invert_files take their defaults from here, so that the help can never state
another value than the code uses.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["gani", "pti", "wplus", "w"]     # the one list of methods; METHODS is the same, as a tuple
METHODS: tuple[str, ...] = get_args(Method)
TUNING_METHODS: tuple[str, ...] = ("gani", "pti")  # the methods that tune the generator after the pivot

PIVOT_STEPS = 450           # PTI's first-inversion steps (pivot.PivotConfig.steps)
TUNE_STEPS = 350            # PTI's tuning steps (tuning.TuneConfig.steps)
GANI_REG_WEIGHT = 0.1       # GANI's regulariser weight (invert.GANI_TUNE; docs/method.md)
PTI_REG_WEIGHT = 0.0        # PTI as published: no regulariser (invert.PTI_TUNE)

CPU_BATCH_SIZE = 4          # `auto` on a CPU: GANI's most images per hour in benchmarks/batching.py (README)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# How an input may be prepared before inversion (InvertConfig.align): ffhq, its largest face aligned the FFHQ way
# (gani_core.faces); none of them (None): the image as it is, centre-cropped to the generator's square.
Align = Literal["ffhq"]
ALIGNMENTS: tuple[str, ...] = get_args(Align)
