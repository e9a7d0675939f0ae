"""Exact energy of a trained or distilled model by enumerating every configuration (small lattices).

    python benchmarks/exact_energy.py data/train/heisenberg_4x4 data/distill/heisenberg_4x4/bits6 ...

For each model dir (a ``model.pt`` from the train or distill stage) prints the sampled energy of its
``metrics.json`` beside the exact one (:func:`vqnqs.vmc.enumeration.exact_energy`) and their relative errors
against the reference of the metrics; writes ``benchmarks/results/exact_energy.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vqnqs.io import read_json, write_json
from vqnqs.physics.hamiltonian import build_hamiltonian
from vqnqs.stages.inputs import system_from_info
from vqnqs.vmc.checkpoint import load_model
from vqnqs.vmc.enumeration import exact_energy
from vqnqs.vmc.evaluation import relative_error

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+", type=Path, help="train or distill stage out dirs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "exact_energy.json")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    records = []
    for directory in args.model_dirs:
        started = time.perf_counter()
        model, info = load_model(directory / "model.pt")
        system = system_from_info(info, str(directory / "model.pt"))
        hamiltonian = build_hamiltonian(system["system"], system["size"], system["boundary"])
        model = model.double()
        metrics = read_json(directory / "metrics.json")
        reference = metrics["reference_per_site"]
        exact = exact_energy(hamiltonian, model)
        record = {
            "model_dir": str(directory),
            "sampled_energy_per_site": metrics["energy_per_site"],
            "sampled_energy_error": metrics.get("energy_error"),
            "sampled_rel_error": metrics.get("rel_error"),
            "exact_energy_per_site": exact["energy_per_site"],
            "exact_rel_error": relative_error(exact["energy_per_site"], reference),
            "reference_per_site": reference,
            "norm": exact["norm"],
            "n_states": exact["n_states"],
            "seconds": time.perf_counter() - started,
        }
        records.append(record)
        print(
            f"{directory}: exact E/N {record['exact_energy_per_site']:.8f} (rel {record['exact_rel_error']:.2e}), "
            f"sampled {record['sampled_energy_per_site']:.8f} +- {record['sampled_energy_error']:.1e} "
            f"(rel {record['sampled_rel_error']:.2e}); {record['n_states']} states, norm {record['norm']:.12f}",
            flush=True,
        )
    write_json(args.out, records)
    print(f"-> {args.out}")
    return records


if __name__ == "__main__":
    main()
