"""python3 -m benchkit: what integration/bench runs."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
