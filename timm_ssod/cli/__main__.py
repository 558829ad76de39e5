"""``python -m timm_ssod.cli``: ``timm-ssod``."""
import sys

from ._main import main

sys.exit(main())
