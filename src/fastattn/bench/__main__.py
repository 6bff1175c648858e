"""``python -m fastattn.bench``: run the benchmark and exit with its status (see ``fastattn.bench``)."""

import sys

from .cli import main

sys.exit(main())
