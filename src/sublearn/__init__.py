"""Subliminal-learning teacher/student experiments (split-head MLP/CNN, distillation on noise).

One concern per module (README, "Where things are"): settings (config, syntax, architecture, plan), data
(catalog, data, dataid, idx), the model and its training (model, noise, training, stacked, evaluation,
perturb, teacher, student), results (records, outputs), jobs (sheets, cost, grouping, batch) and the
command line (cli, device, errors).
"""

__version__ = "0.1.0"
