"""`python -m viewer` runs the viewer command."""

import sys

from viewer.cli import main

sys.exit(main())
