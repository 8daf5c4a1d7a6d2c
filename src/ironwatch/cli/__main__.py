"""``python -m ironwatch.cli ...``, as the tests and benches run the command."""

import sys

from ironwatch.cli import main

sys.exit(main())
