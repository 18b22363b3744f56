"""``python -m hw.emit``: the command; the code is :mod:`hw.flow.emit`."""

import sys

from hw.flow.emit import main

if __name__ == "__main__":
    sys.exit(main())
