"""``python -m ekd`` (and ``torchrun -m ekd cache CONFIG``) runs the CLI."""

import sys

from ekd.cli import main

sys.exit(main())
