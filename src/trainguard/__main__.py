"""``python -m trainguard`` runs the command-line tool."""

import sys

from trainguard.cli import main

sys.exit(main())
