"""The generation pipeline: orchestration only, every stage behind its interface.

- ``generate``: the run (inputs checked, shards, batches, ``run.json``); ``generate()`` and ``Generator``
- ``mode_d``, ``guided``: each mode's head (D; T and R) as numbered steps, ending in placed bodies
- ``tail``: the tail they share (label, image, cycles, verify); ``records``: records and manifest rows
- ``samples``: the typed outputs the stages hand each other; ``stages``: a run's models, a batch's clock
- ``requests``, ``inputs``, ``verify``: per-sample draws, the user's inputs, label-agreement metrics
"""
