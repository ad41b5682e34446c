"""``python -m harness.fidelity`` (``make bench-harness``)."""

import sys

from harness.fidelity.cli import main

sys.exit(main())
