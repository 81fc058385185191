"""`python -m scheduler_core --headless` / scripting commands, without the console's dependencies loaded."""

import sys

from .cli import main

sys.exit(main())
