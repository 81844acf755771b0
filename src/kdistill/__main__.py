"""``python -m kdistill``: the same as the ``kdistill`` command."""

import sys

from kdistill.cli import main

sys.exit(main())
