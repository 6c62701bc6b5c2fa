"""Start a Scalenode node: `python run.py --help`."""

import sys

from node.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
