"""``python -m model.quantize``: see :mod:`model.quantize`."""

import sys

from ..cli import run
from .cli import main

sys.exit(run("model.quantize", main))
