"""prunerzero: discover pruning metrics for LLMs with genetic programming."""
__version__ = "0.1.0"
