import sys

from pdeinf.cli import main

sys.exit(main())
