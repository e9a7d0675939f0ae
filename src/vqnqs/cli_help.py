"""The help texts of the ``vqnqs`` sub-commands (:mod:`vqnqs.cli`): what each does, and an example call."""

STAGE_TEXTS = {  # sub-command: (one-line help, description, example)
    "reference": (
        "exact or literature ground-state energy of one system and size",
        (
            "Ground-state energy reference. Open TFIM chains: free fermions (any N, Gamma, J). "
            "Heisenberg: sparse Lanczos in the ground state's Sz sector when it fits in memory "
            "(up to ~26 spins), else a row of the literature table. Writes a JSON record."
        ),
        "vqnqs reference --system heisenberg --size 4x4 --out data/reference/heisenberg_4x4.json",
    ),
    "report": (
        "Table 1, figures and results/report.md from all stage outputs",
        (
            "Collects the reference, train, distill and profile outputs of every run and bandwidth in the "
            "params file and writes report.md, table1.csv, the TFIM scaling fits and seaborn figures (PNG, "
            "each with the CSV it was drawn from) into --out-dir."
        ),
        "vqnqs report --params params.yaml --data-dir data --out-dir results",
    ),
    "train": (
        "VMC training of the transformer wave function",
        (
            "Variational Monte Carlo of the autoregressive transformer (SR/minSR or Adam). Resumes from a "
            "checkpoint in --out-dir; writes checkpoint.pt, history.csv, model.pt and metrics.json there, and one "
            "MLflow run. Which model: the baseline (default) on any system; for long chains (N >= 64) the position "
            "family, --set model=vq --set bits=12 --set attention=position --set window=4 --set "
            "quantize_final=true --set engine=incremental, whose local energy touches only the rows near a flip "
            "(README, 'Which model')."
        ),
        (
            "vqnqs train --run heisenberg_4x4 --reference data/reference/heisenberg_4x4.json "
            "--out-dir data/train/heisenberg_4x4 --set steps=300"
        ),
    ),
    "distill": (
        "distil a trained transformer (teacher) into a VQ-NQS student of a given bandwidth",
        (
            "Fit a vector-quantised student (bits = heads x log2(codes) per location) to the teacher's "
            "log-amplitudes on fresh exact teacher samples (L2 loss, Adam), optionally fine-tune it by VMC on its "
            "own energy (finetune.steps > 0: SR, straight-through codes), then evaluate its energy on its own "
            "samples through the dedup engine (checked against the dense local energy). Resumes from a "
            "checkpoint in --out-dir; writes checkpoint.pt, history.csv, model.pt and metrics.json there, and one "
            "MLflow run. Which model: the baseline (default) on any system; for long chains (N >= 64) the position "
            "family, --set model=vq --set bits=12 --set attention=position --set window=4 --set "
            "quantize_final=true --set engine=incremental, whose local energy touches only the rows near a flip "
            "(README, 'Which model')."
        ),
        (
            "vqnqs distill --run heisenberg_4x4 --teacher data/train/heisenberg_4x4 --bits 6 "
            "--out-dir data/distill/heisenberg_4x4/6 --set finetune.steps=300"
        ),
    ),
    "profile": (
        "local-energy FLOPs and wall-clock of the baseline and a VQ-NQS student, dense vs dedup",
        (
            "Profile the local energy of the baseline (--baseline: a train stage out dir) and of a VQ-NQS student "
            "(--model-dir: a distill stage out dir) on batches of exact samples: FLOPs by component on the dense "
            "path and through the dedup engine (total and quantised-ops savings, as in the paper's Table 1) and "
            "wall-clock of both paths. Energies come from the dirs' metrics.json. System: --run or "
            "--system/--size, else the baseline model's own record. Writes OUT and OUT_components.csv, and one "
            "MLflow run."
        ),
        (
            "vqnqs profile --run heisenberg_4x4 --model-dir data/distill/heisenberg_4x4/bits6 "
            "--baseline data/train/heisenberg_4x4 --out data/profile/heisenberg_4x4/bits6.csv --set n_batches=2"
        ),
    ),
}
