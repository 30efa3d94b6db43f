"""What methods and tasks are written against: channel surgery (dependency groups, removal, rounding,
MACs), the training loop, distributed helpers, shared hooks, errors and file locks.

Nothing here imports the application (``harness.run``, ``harness.cli``...), a method or a task.
"""
