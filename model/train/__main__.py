"""``python -m model.train``: see :mod:`model.train`."""

import sys

from ..cli import run
from .cli import main

sys.exit(run("model.train", main))
