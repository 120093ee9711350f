"""``python -m mist_core``: see :mod:`mist_core.cli`."""

import sys

from mist_core.cli import main

sys.exit(main())
