"""``python -m formal_sae.cli``: the ``formal-sae`` script."""

import sys

from formal_sae.cli import main

sys.exit(main())
