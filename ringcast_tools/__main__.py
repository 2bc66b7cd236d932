import sys

from ringcast_tools.cli import main

sys.exit(main())
