"""albat: offline data selection for adapting large models with scarce data (BAT / ALBAT)."""

__version__ = "0.1.0"
