"""The suite: registry, data, training loops, evaluation, tracking, runner and tuning."""
__version__ = "0.1.0"
