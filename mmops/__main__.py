import sys

from mmops.cli import main

sys.exit(main())
