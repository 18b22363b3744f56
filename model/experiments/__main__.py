"""``python -m model.experiments``: see :mod:`model.experiments`."""

from .cli import main

main()
