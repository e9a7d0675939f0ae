"""``python -m vqnqs`` is the ``vqnqs`` command."""

import sys

from vqnqs.cli import main

sys.exit(main())
