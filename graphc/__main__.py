"""`python -m graphc ...`: the same command line as the `graphc` console script."""
import sys

from graphc.cli import main

sys.exit(main())
