"""Variational Monte Carlo of the transformer wave function.

- ``local_energy``: ``E_loc(s)`` through the Hamiltonian's connected elements, in chunks.
- ``gradient``: energy statistics, the eq. 3 surrogate loss, per-sample log-derivatives (torch.func).
- ``optim``: stochastic reconfiguration (full S and minSR), Adam, learning-rate / diagonal-shift schedules.
- ``checkpoint``: atomic, ``weights_only``-loadable checkpoints and model files, checked on load.
- ``trainer``: ``TrainConfig`` and ``Trainer`` (the loop, resume, NaN guard, final evaluation, outputs).
"""
