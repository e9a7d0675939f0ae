"""Data-parallel VMC (vqnqs.vmc.distributed): two gloo processes with Ns/2 samples each make the same updates as
one process drawing the same Ns samples from the same two rank streams, and the rank streams do not overlap."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqnqs.models import AutoregressiveTransformer
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.train import Trainer
from vqnqs.vmc.distributed import SINGLE, World, draw, rank_generators, rank_seed
from vqnqs.vmc.optim import gram

from .conftest import tiny_config

STEPS = 3
# (model, optimiser) runs compared; float64 so that only the order of summation differs between the two sides.
CASES = {
    "adam": {"optimizer": "adam"},
    "minsr": {"optimizer": "sr", "diag_shift": 0.01, "diag_shift_final": 0.01, "sr_momentum": 0.5},
    "vq_adam": {"optimizer": "adam", "model": "vq", "bits": 4, "codes": 4},
    # complex log psi: complex local energies and log-derivatives gathered, SR split per network
    "phase_minsr": {"optimizer": "sr", "diag_shift": 0.01, "diag_shift_final": 0.01, "phase_blocks": 1},
}


def settings(case: str) -> dict:
    return {"steps": STEPS, "dtype": "float64", "n_samples": 32, "lr": 0.02, **CASES[case]}


def trained(case: str, out_dir, world: World = SINGLE, streams: int = 1) -> dict[str, torch.Tensor]:
    """The state dict after STEPS updates on the 8-spin chain; ``streams``: rank streams one process draws from."""
    trainer = Trainer(build_hamiltonian("tfim", "8"), tiny_config(**settings(case)), out_dir, -1.0, world=world)
    if streams > 1:  # one process standing in for `streams` ranks
        trainer.generator = rank_generators(trainer.config.seed, range(streams), trainer.device)
    for _ in range(STEPS):
        trainer.update()
    return trainer.model.state_dict()


def rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for case in CASES:
            torch.save(trained(case, out_dir, World(rank, 2)), f"{out_dir}/{case}_{rank}.pt")
        torch.save(gram(rows(), block=4, world=World(rank, 2)), f"{out_dir}/gram_{rank}.pt")
    finally:
        dist.destroy_process_group()


def rows() -> torch.Tensor:
    """A fixed (11, 7) matrix: 3 row blocks of 4, so both ranks compute some of the Gram matrix."""
    return torch.randn(11, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_make_the_updates_of_one_process_with_the_same_samples(tmp_path):
    mp.spawn(rank_main, args=(free_port(), str(tmp_path)), nprocs=2)
    for case in CASES:
        reference = trained(case, tmp_path, streams=2)
        ranks = [torch.load(tmp_path / f"{case}_{rank}.pt", weights_only=True) for rank in range(2)]
        for name, value in reference.items():
            assert torch.equal(ranks[0][name], ranks[1][name]), (case, name)  # the ranks never drift apart
            torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=1e-10, msg=f"{case} {name}")
    for rank in range(2):  # the minSR Gram matrix, its row blocks split over the ranks: the same numbers
        assert torch.equal(torch.load(tmp_path / f"gram_{rank}.pt", weights_only=True), gram(rows(), block=4))
    n_params = sum(p.numel() for p in reference.values())
    assert n_params > settings("minsr")["n_samples"]  # so the SR case is minSR (the sample-space Gram matrix)


def test_rank_streams_draw_no_common_sample():
    hamiltonian = build_hamiltonian("tfim", "32")
    torch.manual_seed(0)
    model = AutoregressiveTransformer(tiny_config().transformer_config(hamiltonian))
    generators = rank_generators(seed=3, ranks=range(4), device=torch.device("cpu"))
    with torch.no_grad():
        batches = [draw(model, 64, [generator]) for generator in generators]  # (64, 32) per rank
    rows = [{tuple(row.tolist()) for row in batch} for batch in batches]
    for a in range(4):
        for b in range(a):
            assert not rows[a] & rows[b], (a, b)
    assert rank_seed(3, 0) == 3  # one process keeps the plain stream
    assert len({rank_seed(3, rank) % 2**32 for rank in range(1000)}) == 1000  # torch seeds mt19937 with 32 bits


@pytest.mark.parametrize("n_samples", [32, 48])
def test_draw_takes_an_equal_share_of_each_stream(n_samples):
    hamiltonian = build_hamiltonian("tfim", "8")
    model = AutoregressiveTransformer(tiny_config().transformer_config(hamiltonian))
    pair = rank_generators(seed=1, ranks=range(2), device=torch.device("cpu"))
    again = rank_generators(seed=1, ranks=range(2), device=torch.device("cpu"))
    joint = draw(model, n_samples, pair)
    half = n_samples // 2
    assert torch.equal(joint, torch.cat([draw(model, half, [again[0]]), draw(model, half, [again[1]])]))
