"""`python -m cocomix` runs the CLI."""

import sys

from cocomix.cli import main

sys.exit(main())
