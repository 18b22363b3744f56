"""``python -m hw.gates``: the command; the code is :mod:`hw.reports.gates`."""

import sys

from hw.reports.gates import main

if __name__ == "__main__":
    sys.exit(main())
