"""``python -m bot.trainer SPEC.json``: the training child process."""

import sys

from bot.trainer.run import main

sys.exit(main())
