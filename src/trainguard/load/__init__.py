"""Safe loading of model files: scan first, then load the exact bytes that were scanned.

``safe_load`` is the only loader trainguard offers. It has no fallback to unsafe
loading and no environment switch that turns it off: a file the scanner does not
pass raises :class:`~trainguard.core.errors.UnsafeFileError`.
"""

from trainguard.load.convert import ConversionResult, convert_to_safetensors
from trainguard.load.safe_load import safe_load

__all__ = ["ConversionResult", "convert_to_safetensors", "safe_load"]
