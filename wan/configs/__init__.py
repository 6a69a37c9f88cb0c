from .presets import TRANSFORMER_PRESETS, transformer_config

__all__ = ["TRANSFORMER_PRESETS", "transformer_config"]
