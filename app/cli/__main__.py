"""``python -m app.cli``: the ``ddpm`` command."""

import sys

from app.cli import main

sys.exit(main())
