import sys

from liverseg.cli import main

sys.exit(main())
