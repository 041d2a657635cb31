"""``python -m consortia.cli``: the ``consortia`` command without the installed script."""

import sys

from consortia.cli import main

sys.exit(main())
