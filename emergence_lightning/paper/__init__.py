"""The paper's side: what reproduces "Quantifying Emergence in Neural Networks" (needs the ``paper`` extra).

- :mod:`.data`: MNIST 5k, Fashion-MNIST and CIFAR-10 data modules; :mod:`.models`: the paper's MLP and CNN.
- :mod:`.experiments`: the ``demo`` and ``reproduce`` runs; :mod:`.progress`: one line per epoch off a terminal.
- :mod:`.report`: figures and tables from a run's logs.
- :mod:`.predictor`: the study of whether emergence at initialisation predicts training.
- :mod:`.cli`: the ``emergence-lightning`` command.

The callbacks never import this package.
"""
