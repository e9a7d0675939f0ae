rule train:
    """Baseline VMC of the transformer. Resumes from data/train/{run}/checkpoint.pt (not a declared
    output, so an interrupted job keeps it)."""
    input:
        reference="data/reference/{run}.json",
        code=sources("physics", "models", "dedup", "vmc", "stages"),
    output:
        model="data/train/{run}/model.pt",
        metrics="data/train/{run}/metrics.json",
        history=report(
            "data/train/{run}/history.csv",
            caption="../report/train.rst",
            category="2. Baseline VMC",
            labels={"run": "{run}"},
        ),
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        train=P["train"],
    threads: TRAIN_NPROC
    resources:
        gpu=GPU * TRAIN_NPROC,
    log:
        "logs/train/{run}.log",
    benchmark:
        "logs/train/{run}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "{TRAIN} --params {PARAMS} --run {wildcards.run} --reference {input.reference}"
        " --out-dir data/train/{wildcards.run} --on-change restart > {log} 2>&1"
