import sys

from contrastlens.cli.main import main

sys.exit(main())
