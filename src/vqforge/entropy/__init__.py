"""Entropy models over token streams, and what the codec needs from them (see base.py)."""

from .base import *  # noqa: F401,F403  (the codec contract: exactly base.__all__)
from .base import __all__  # noqa: F401
from . import models as _models  # noqa: F401  (registers transformer_ar and masked_groups)
