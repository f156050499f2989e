"""`python -m edges.cli`: the `b24q` command without its installed script."""

import sys

from edges.cli import main

sys.exit(main())
