import sys

from mertlab.cli import main

sys.exit(main())
