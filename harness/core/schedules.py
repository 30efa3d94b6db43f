"""The learning-rate schedules ``harness.core.train.lr_factor`` implements, named apart (no torch) so
that the config check can list them without loading the training loop."""

SCHEDULES = ("cosine", "step", "constant", "triangular", "onecycle")
