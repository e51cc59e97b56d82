"""``python -m rlaif`` (and ``accelerate launch -m rlaif``, ``torchrun -m rlaif``): the CLI."""

import sys

from rlaif.cli import main

sys.exit(main())
