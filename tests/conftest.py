from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples" / "photos"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES
