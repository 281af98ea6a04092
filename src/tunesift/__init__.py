"""tunesift: model-aware data selection for instruction fine-tuning (DELIFT, DONOD)."""

__version__ = "0.1.0"
