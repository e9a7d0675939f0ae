"""The pipeline's stages on one driver: each supplies its update, evaluation and state.

- ``config``: every knob of every stage (the params schema is generated from it).
- ``settings``: a stage's system and config from flags, the params file and ``--set``; its MLflow run.
- ``inputs``: what stages read (references, trained model dirs), checked before any work.
- ``driver``: the :class:`~vqnqs.stages.driver.Stage` base: resume, loop, checkpoints, history, outputs, MLflow.
- ``train``, ``distill``: the step-wise stages; ``profile``: the local-energy cost of trained models.
"""
