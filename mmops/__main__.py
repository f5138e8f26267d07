import signal
import sys

# A SIGTERM before the workers install their own handlers: nothing is in flight yet.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

from mmops.cli import main  # noqa: E402

sys.exit(main())
