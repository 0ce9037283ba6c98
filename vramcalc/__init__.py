"""vramcalc: predict peak GPU memory, time and cost of LLM training and fine-tuning.

``import vramcalc`` never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
