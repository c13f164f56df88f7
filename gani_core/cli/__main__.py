"""``python -m gani_core.cli``: the ``gani`` command."""

from gani_core.cli import console

console()
