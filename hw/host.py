"""``python -m hw.host``: the command; the code is :mod:`hw.boards.host`."""

import sys

from hw.boards.host import main

if __name__ == "__main__":
    sys.exit(main())
