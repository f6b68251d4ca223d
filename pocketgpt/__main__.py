"""`python -m pocketgpt` is the CLI, so torchrun can launch it: `torchrun --nproc-per-node 2 -m pocketgpt train ...`."""

import sys

from pocketgpt.cli.main import main

sys.exit(main())
