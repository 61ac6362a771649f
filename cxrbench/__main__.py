import sys

from cxrbench.benchmark.cli import main

sys.exit(main())
