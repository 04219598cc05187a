"""sm120-harness: kernel parity, accuracy and performance validation of SGLang on SM120."""

__version__ = "0.1.0"
