"""Variational Monte Carlo of the transformer wave function: the algorithms, free of files and loops.

- ``local_energy``: ``E_loc(s)`` through the Hamiltonian's connected elements, in chunks.
- ``log_psi``: one factory for log-psi evaluators (dense, dedup, dedup without prefix reuse).
- ``gradient``: energy statistics, the eq. 3 surrogate loss, per-sample log-derivatives (torch.func).
- ``optim``: stochastic reconfiguration (full S and minSR, SPRING), Adam, learning-rate / shift schedules.
- ``step``: one VMC update and one distillation fit update.
- ``evaluation``: sampled energy, relative error, dense-vs-dedup check, fidelity.
- ``enumeration``: the exact energy of a model by summing over every configuration (small lattices).
- ``checkpoint``: atomic, ``weights_only``-loadable checkpoints and model files, checked on load.

The stages that drive these (training, distillation, profiling) live in :mod:`vqnqs.stages`.
"""
