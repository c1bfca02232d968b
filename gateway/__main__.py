"""`python -m gateway`: the `citadel-gateway` command."""

import sys

from gateway.process.cli import main

sys.exit(main())
