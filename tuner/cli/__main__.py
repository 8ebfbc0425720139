"""``python -m tuner.cli``: the console script."""

import sys

from tuner.cli import main

sys.exit(main())
