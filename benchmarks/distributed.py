"""Seconds per VMC iteration of data-parallel training with 1 and several processes, and the communication share.

What is timed: :meth:`vqnqs.stages.train.Trainer.update` (one ``vmc_step``: the train stage's default SR,
minSR + SPRING) of the baseline transformer, with the train settings of the params file for each run (default:
``heisenberg_4x4`` and ``tfim_64`` of params.yaml), in P processes joined by torch.distributed (gloo on CPU,
NCCL on GPUs: ``--device cuda`` gives rank r GPU r), each drawing ``n_samples / P`` of every batch. Each
configuration ``P:T`` (P processes of T threads) runs ``--warmup`` untimed iterations, then ``--repeats`` timed
ones, each started after a barrier. Reported per configuration: the median of rank 0's seconds per iteration, and
the communication share: rank 0's seconds inside the collectives (all-gathers of samples, energies and SR rows,
all-reduce of Adam gradients; waiting for the slower rank included) over the iteration's seconds.

    python benchmarks/distributed.py                                  # 1:1, 2:1 and 1:2 on a 2-core CPU
    python benchmarks/distributed.py --configs 1:1,2:1,4:1,8:1 --device cuda --tag gpu

Writes ``benchmarks/results/distributed_<tag>.json`` (records and environment, the 1-minute load average and
``uptime`` before and after) and ``.csv`` (one row per run x configuration).
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqnqs.config import load_params, run_settings
from vqnqs.io import atomic_open, write_json
from vqnqs.profiling.timing import environment, load_average
from vqnqs.stages.config import TrainConfig
from vqnqs.stages.settings import hamiltonian_from, stage_config
from vqnqs.stages.train import Trainer
from vqnqs.vmc.distributed import World

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    add = parser.add_argument
    add("--runs", default="heisenberg_4x4,tfim_64", help="keys under 'systems' in the params file, comma-separated")
    add("--params", type=Path, default=REPO / "params.yaml", help="params file (default: params.yaml)")
    add("--configs", default="1:1,2:1,1:2", help="processes:threads per process, comma-separated")
    add("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    add("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    add("--repeats", type=int, default=5, help="timed iterations (default 5)")
    add("--tag", default="cpu", help="name of the result files (default: cpu)")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_main(rank: int, size: int, threads: int, port: int, args: argparse.Namespace, run: str, out: str) -> None:
    """One rank: the run's trainer, warm-up, timed iterations; rank 0 saves its seconds to ``out``."""
    torch.set_num_threads(threads)
    backend = "nccl" if args.device == "cuda" else "gloo"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        params = load_params(args.params)
        settings = run_settings(params, run)
        overrides = [("model", "baseline"), ("device", args.device)]
        config = stage_config(TrainConfig, params, settings, overrides)
        device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
        world = World(rank, size, device)
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(hamiltonian_from(settings), config, scratch, -1.0, world=world)
            rows = []
            for iteration in range(args.warmup + args.repeats):
                dist.barrier()
                start = time.perf_counter()
                row = trainer.update()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if iteration >= args.warmup:
                    rows.append({"seconds": time.perf_counter() - start, "communication_s": row["communication_s"]})
        if rank == 0:
            torch.save({"rows": rows, "n_samples": config.n_samples, "n_params": trainer.model.n_params}, out)
    finally:
        dist.destroy_process_group()


def measure(args: argparse.Namespace, run: str, size: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = f"{scratch}/rank0.pt"
        mp.spawn(rank_main, args=(size, threads, free_port(), args, run, out), nprocs=size)
        result = torch.load(out, weights_only=True)
    seconds = [row["seconds"] for row in result["rows"]]
    communication = [row["communication_s"] for row in result["rows"]]
    return {
        "run": run,
        "processes": size,
        "threads_per_process": threads,
        "n_samples": result["n_samples"],
        "samples_per_rank": result["n_samples"] // size,
        "n_params": result["n_params"],
        "seconds_per_iteration": statistics.median(seconds),
        "communication_s": statistics.median(communication),
        "communication_share": statistics.median(c / s for c, s in zip(communication, seconds, strict=True)),
        "seconds_all": seconds,
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configs = [tuple(int(x) for x in item.split(":")) for item in args.configs.split(",")]
    before = {"load_1min": load_average(), "uptime": uptime()}
    records = []
    for run in args.runs.split(","):
        for size, threads in configs:
            record = measure(args, run, size, threads)
            records.append(record)
            print(
                f"{run} {size} x {threads} threads: {record['seconds_per_iteration']:.3f} s/iteration, "
                f"communication {100 * record['communication_share']:.1f} %",
                flush=True,
            )
    after = {"load_1min": load_average(), "uptime": uptime()}
    RESULTS.mkdir(exist_ok=True)
    meta = {"warmup": args.warmup, "repeats": args.repeats, "device": args.device, "params": str(args.params)}
    env = {**environment(args.device), "load_before": before, "load_after": after}
    write_json(RESULTS / f"distributed_{args.tag}.json", {**meta, "environment": env, "records": records})
    columns = [key for key in records[0] if key != "seconds_all"]
    with atomic_open(RESULTS / f"distributed_{args.tag}.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


if __name__ == "__main__":
    main()
