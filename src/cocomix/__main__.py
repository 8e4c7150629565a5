"""`python -m cocomix` runs the CLI.

No paper equation.
"""

import sys

from cocomix.cli import main

sys.exit(main())
