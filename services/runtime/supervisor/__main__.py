"""``python -m services.runtime.supervisor``: run the host's container supervisor."""

import sys

from services.runtime.supervisor.server import main

sys.exit(main())
