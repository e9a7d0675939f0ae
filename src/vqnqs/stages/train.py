"""The ``train`` stage: VMC (:func:`vqnqs.vmc.step.vmc_step`) of the transformer, or with ``model: vq`` of a
VQ-NQS of ``bits`` bits (straight-through derivatives, codebooks kept up by the step), to ``steps``; from
scratch, or from the weights of another trained model (``init_from``).

Out dir (all written atomically; :mod:`vqnqs.stages.driver`)::

    checkpoint.pt   every ``checkpoint_every`` steps and at the end: resume continues the exact trajectory
    history.csv     per-step metrics up to the last checkpoint (:data:`HISTORY_COLUMNS`)
    model.pt        the trained model for later stages (:func:`vqnqs.vmc.checkpoint.load_model`)
    metrics.json    final evaluation on ``eval_samples`` fresh samples (:data:`METRICS_KEYS` and more)

Under ``torchrun`` every process runs this stage on ``n_samples / world_size`` samples of each batch drawn
from its own stream (:mod:`vqnqs.vmc.distributed`); rank 0 writes the files.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vqnqs.models import AutoregressiveTransformer, VQTransformer, from_teacher, make_vq_model
from vqnqs.physics.hamiltonian import Hamiltonian
from vqnqs.stages.config import DTYPES, TrainConfig
from vqnqs.stages.driver import METRICS_KEYS, Stage, mean_of
from vqnqs.stages.inputs import Teacher, system_info
from vqnqs.vmc.checkpoint import model_config_to_dict
from vqnqs.vmc.cost import estimate_line, measure_rate, vmc_step_flops
from vqnqs.vmc.distributed import SINGLE, World, rank_generators
from vqnqs.vmc.enumeration import exact_metrics
from vqnqs.vmc.evaluation import energy_metrics, sampled_energy
from vqnqs.vmc.optim import make_optimizer
from vqnqs.vmc.step import STEP_PARTS, VMCContext, vmc_step

HISTORY_COLUMNS = (
    "step",  # completed updates
    "energy_per_site",  # E / N of this step's samples (before the update)
    "energy_error",  # standard error of E / N
    "variance",  # var E_loc (whole system)
    "rel_error",  # |E / N - reference| / |reference|
    "v_score",  # N var(E_loc) / E^2 of this step's samples (0 for an eigenstate; no reference needed)
    "grad_norm",  # |dE/dθ| (eq. 3)
    "lr",  # learning rate of this update
    "diag_shift",  # SR diagonal shift of this update (empty for Adam)
    "distinct_samples",  # distinct configurations among the n_samples (each is evaluated once)
    "samples_per_s",  # n_samples / wall time of the whole step
    "eloc_configs_per_s",  # connected configurations through the network per second of local energy
    "time_s",  # wall time since the start of training (summed over resumed invocations)
    "communication_s",  # of this step, rank 0's wall time inside collectives (0 on one process)
    "code_usage",  # model 'vq': fraction of codes (all quantisers) used by this step's samples
    *(f"{part}_s" for part in STEP_PARTS),  # wall time of each part of this step (vqnqs.vmc.step.STEP_PARTS)
)


class Trainer(Stage):
    """Model, optimiser and sampler of one training run, restorable from a checkpoint in ``out_dir``."""

    name = "train"
    history_columns = HISTORY_COLUMNS
    final_keys = tuple(key for key in METRICS_KEYS if key != "steps")

    def __init__(
        self,
        hamiltonian: Hamiltonian,
        config: TrainConfig,
        out_dir: str | Path,
        reference: float,
        init_from: Teacher | None = None,
        world: World = SINGLE,
    ) -> None:
        """``init_from``: a trained model to start from (every weight whose name and shape match is copied,
        :func:`vqnqs.models.from_teacher`; the rest keeps its fresh initialisation). ``world``: the processes
        sharing each batch (every rank builds the same model from the same seed)."""
        super().__init__(hamiltonian, config, out_dir, reference, world)
        self.init_from = init_from
        self.model_config = config.transformer_config(hamiltonian)
        torch.manual_seed(config.seed)  # parameter initialisation (codebooks: data-initialised by the first upkeep)
        if config.model == "vq":
            model = make_vq_model(self.model_config, config.vq_config(config.bits))
        else:
            model = AutoregressiveTransformer(self.model_config)
        self.model = model.to(self.device, DTYPES[config.dtype])
        if init_from is not None:
            from_teacher(self.model, init_from.model.to(self.device, DTYPES[config.dtype]))
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr)
        self.generator = rank_generators(config.seed, [world.rank], self.device)[0]  # this rank's sampler stream
        self.generators = {"sampler": self.generator}

    def stale_identity(self) -> dict[str, tuple[object, str]]:
        digest = None if self.init_from is None else self.init_from.digest
        return {"init_digest": (digest, "another --init-from model.pt")}

    def state_dict(self) -> dict:
        return {
            "model_config": model_config_to_dict(self.model_config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def update(self) -> dict:
        """Sample, estimate the energy, update the parameters once; returns the history row of this step."""
        config, step = self.config, self.step + 1
        start = time.perf_counter()
        context = VMCContext(
            self.hamiltonian, self.optimizer, self.generator, config.chunk_size, config.engine, world=self.world
        )
        result = vmc_step(self.model, self.laid_out(config), context, step)
        self.step = step
        elapsed = time.perf_counter() - start
        return {
            "step": step,
            **energy_metrics(result.stats, self.hamiltonian.n_sites, self.reference),
            "grad_norm": result.grad_norm,
            "lr": result.lr,
            "diag_shift": result.diag_shift if config.optimizer == "sr" else None,
            "distinct_samples": result.distinct_samples,
            "samples_per_s": config.n_samples / elapsed,
            "eloc_configs_per_s": result.eloc_configs_per_s,
            "time_s": self.wall_time_s + elapsed,
            "communication_s": result.communication_s,
            "code_usage": self.model.code_usage() if isinstance(self.model, VQTransformer) else None,
            **{f"{part}_s": seconds for part, seconds in result.seconds.items()},
        }

    def evaluate(self) -> dict:
        """Energy on ``eval_samples`` fresh samples (continuing the sampler streams, ``eval_samples / world_size``
        from each rank's); exact where small."""
        config, world = self.config, self.world
        own = config.eval_samples // world.size
        energy = sampled_energy(self.hamiltonian, self.model, self.generator, own, config.chunk_size, config.engine)
        stats = world.pooled(energy.stats, own)
        return {
            **energy_metrics(stats, self.hamiltonian.n_sites, self.reference),
            "reference_per_site": self.reference,
            "energy": stats.mean,
            "eval_samples": config.eval_samples,
            "eval_eloc_configs_per_s": energy.eloc_configs_per_s,  # of rank 0
            **exact_metrics(self.hamiltonian, self.model, self.reference),  # small lattices: no sampling error
        }

    def summary(self, metrics: dict) -> dict:
        config = self.config
        quantiser = {}
        if isinstance(self.model, VQTransformer):
            vq = self.model.vq_config
            quantiser = {"bits": config.bits, "heads": vq.heads, "codes": vq.codes}
        return {
            "eloc_configs_per_s": mean_of(self.history, "eloc_configs_per_s"),
            "samples_per_s": mean_of(self.history, "samples_per_s"),
            **{f"mean_{part}_s": mean_of(self.history, f"{part}_s") for part in STEP_PARTS},
            "optimizer": config.optimizer,
            "model": config.model,
            "world_size": self.world.size,
            "samples_per_rank": config.n_samples // self.world.size,
            "mean_communication_s": mean_of(self.history, "communication_s"),
            **quantiser,
        }

    def output_model(self, metrics: dict) -> tuple[AutoregressiveTransformer, dict]:
        info = {**system_info(self.hamiltonian), "steps": self.step, "energy_per_site": metrics["energy_per_site"]}
        return self.model, info

    def cost_estimates(self) -> list[str]:
        flops = vmc_step_flops(self.model, self.hamiltonian, self.config.n_samples // self.world.size)
        return [estimate_line(self.name, flops, measure_rate(self.model), self.total_steps - self.step)]

    def postfix(self, row: dict) -> str:
        return f"E/N={row['energy_per_site']:.6f} rel={row['rel_error']:.1e}"
