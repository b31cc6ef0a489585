"""python -m sr_client IN... --scale 2 -o OUTDIR: see sr_client.cli."""

import sys

from sr_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
