"""``python -m gani_core.cli``: the ``gani`` command."""

import sys

from gani_core.cli import main

sys.exit(main())
