"""Subliminal-learning teacher/student experiments (split-head MLP/CNN, distillation on noise)."""

__version__ = "0.1.0"
