"""``python -m rlaif`` (and ``accelerate launch -m rlaif``, ``torchrun -m rlaif``): the CLI."""

import os
import sys

if int(os.environ.get("RANK", "0")) != 0:
    # a second process of a multi-process launch: progress bars come from the main process (tqdm reads
    # this when it is imported, so before the CLI's imports)
    os.environ.setdefault("TQDM_DISABLE", "1")

from rlaif.cli import main

sys.exit(main())
