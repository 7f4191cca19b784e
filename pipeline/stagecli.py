"""What every stage's `main` shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import ApexLoopError

log = logging.getLogger("apexloop")


def configure_logging() -> None:
    """One line per record on stderr; called only from entry points."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_stage(body: Callable[[], Any]) -> int:
    """Run a stage body. A user error prints its message (no traceback) and returns 2."""
    configure_logging()
    try:
        body()
    except ApexLoopError as exc:
        log.error("error: %s", exc)
        return 2
    return 0
