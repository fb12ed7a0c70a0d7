"""`python -m streamer` runs the streamer command."""

import sys

from streamer.cli import main

sys.exit(main())
