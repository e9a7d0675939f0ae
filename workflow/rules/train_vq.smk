rule train_vq:
    """VQ-NQS of {bits} bits trained directly by VMC (train with model 'vq'; the params' train_vq sections
    merged over train). Resumes from its checkpoint.pt like the baseline's training."""
    input:
        reference="data/reference/{run}.json",
        code=sources("physics", "models", "dedup", "vmc", "stages"),
    output:
        model="data/train_vq/{run}/bits{bits}/model.pt",
        metrics="data/train_vq/{run}/bits{bits}/metrics.json",
        history=report(
            "data/train_vq/{run}/bits{bits}/history.csv",
            caption="../report/train_vq.rst",
            category="5. VQ-NQS trained by VMC",
            labels={"run": "{run}", "bits": "{bits}"},
        ),
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        train=P["train"],
        train_vq=P.get("train_vq", {}),
    threads: TRAIN_NPROC
    resources:
        gpu=GPU * TRAIN_NPROC,
    log:
        "logs/train_vq/{run}_bits{bits}.log",
    benchmark:
        "logs/train_vq/{run}_bits{bits}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "{TRAIN} --params {PARAMS} --run {wildcards.run} --bits {wildcards.bits} --reference {input.reference}"
        " --out-dir data/train_vq/{wildcards.run}/bits{wildcards.bits} --on-change restart > {log} 2>&1"


rule profile_vq:
    """Local-energy FLOPs and wall-clock, dense vs dedup, of the baseline and the VMC-trained VQ-NQS."""
    input:
        model="data/train_vq/{run}/bits{bits}/model.pt",
        model_metrics="data/train_vq/{run}/bits{bits}/metrics.json",
        baseline="data/train/{run}/model.pt",
        baseline_metrics="data/train/{run}/metrics.json",
        reference="data/reference/{run}.json",
        code=sources("physics", "models", "dedup", "vmc", "profiling", "stages"),
    output:
        table="data/profile_vq/{run}/bits{bits}.csv",
        components="data/profile_vq/{run}/bits{bits}_components.csv",
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        profiling=P["profiling"],
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/profile_vq/{run}_bits{bits}.log",
    benchmark:
        "logs/profile_vq/{run}_bits{bits}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "vqnqs profile --params {PARAMS} --run {wildcards.run} --model-dir data/train_vq/{wildcards.run}/bits{wildcards.bits}"
        " --baseline data/train/{wildcards.run} --reference {input.reference} --out {output.table} > {log} 2>&1"
