"""The reference harness for CNN filter pruning. Kept light: importing it loads no torch or MLflow."""

__version__ = "0.1.0"
