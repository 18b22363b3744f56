"""How every ``python -m model.*`` command fails on bad input: one line ``prog: what is wrong``
on stderr, exit status 2, no traceback (and, by each command's own care, nothing half-written).

Bad input is a missing or unreadable file (``OSError``), a corrupt checkpoint
(:class:`CheckpointError`), or a value the command refuses (``ValueError``, which
:class:`model.export.ExportError` and :class:`model.data.DatasetError` are). Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys

__all__ = ["CheckpointError", "run"]


class CheckpointError(ValueError):
    """A ``model.pt`` that cannot be read as a checkpoint of this project."""


def run(prog: str, main, argv=None) -> int:
    """``main(argv)`` with bad input reported as one line; its return value as the exit status
    (0 for a command that returns a result rather than a status)."""
    try:
        rc = main(argv)
    except (OSError, ValueError) as e:
        msg = str(e) if not isinstance(e, OSError) or not e.filename else (
            f"{e.filename}: {e.strerror or e}")
        print(f"{prog}: {msg}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0
