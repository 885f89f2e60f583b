import sys

from mxd_saelens.cli import main

sys.exit(main())
