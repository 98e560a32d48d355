"""HMR regressor, losses, data and training (SPIN-style downstream fine-tuning, DESIGN §2).

Kept apart as in 4D-Humans: :mod:`.model` (the network: backbone + iterative error-feedback
head, and ``regress``: regressor + body model inference), :mod:`.spin` (SPIN's network layout and
checkpoints), :mod:`.hmr2` (HMR 2.0's network and checkpoints), :mod:`.init` (any of them from a
``spin:`` / ``hmr2:`` / ``dhpc:`` spec: ``load_regressor_spec``), :mod:`.losses` (pure loss functions and the named loss sets ``dhpc`` / ``paper``), :mod:`.data` (crops,
augmentation, streaming / map-style datasets, the real/synthetic mixer), :mod:`.evaluate` (a
regressor on a benchmark under its protocol: ``dhpc evaluate``), :mod:`.train` (the Lightning glue,
checkpoints, ``train()``) and :mod:`.validation` (held-out metrics during training, ``best/``).

Import the module you need: the package itself imports nothing, so the estimators that use
:mod:`.model` never load Lightning.
"""
