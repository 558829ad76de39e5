"""``python -m timm_ssod.evaluate``: the ``timm-ssod eval`` command (an entry point: the ``cli`` layer)."""
import sys

from ..cli._eval import main

sys.exit(main(prog='python -m timm_ssod.evaluate'))
