import sys

from mxd_saelens.cli.main import main

sys.exit(main())
