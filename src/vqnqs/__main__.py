"""``python -m vqnqs`` is the ``vqnqs`` command."""

import sys

from vqnqs.cli import main

if __name__ == "__main__":
    sys.exit(main())
