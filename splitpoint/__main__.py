import sys

from splitpoint.cli import main

sys.exit(main())
