"""`python -m dassco_hpc run MODULE`."""

import sys

from dassco_hpc.cli import main

sys.exit(main())
