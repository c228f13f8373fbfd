"""``python -m ntkc``: the ``ntkc`` command."""

import sys

from ntkc.cli import main

sys.exit(main())
