"""``python -m hw.report``: the command; the code is :mod:`hw.reports.report`."""

import sys

from hw.reports.report import main

if __name__ == "__main__":
    sys.exit(main())
