"""``python -m dicmor`` is the ``dicmor`` command."""

import sys

from dicmor.cli import main

sys.exit(main())
