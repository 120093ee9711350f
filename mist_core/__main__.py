"""``python -m mist_core``: see :mod:`mist_core.cli`."""

import sys

from mist_core.cli import main, stop_on_sigterm

stop_on_sigterm()
sys.exit(main())
