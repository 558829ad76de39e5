"""``python -m timm_ssod.train`` (and ``torchrun -m timm_ssod.train``): ``timm-ssod train``."""
import sys

from ._main import run

sys.exit(run(prog='python -m timm_ssod.train'))
