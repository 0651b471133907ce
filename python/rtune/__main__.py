"""`python -m rtune ...` runs the rtune command installed with this package."""

from __future__ import annotations

import os
import sys

from ._binary import find_rtune_bin


def main() -> None:
    binary = find_rtune_bin()
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()
