rule distill:
    """VQ-NQS student of {bits} bits fitted to the trained teacher's log-amplitudes."""
    input:
        teacher="data/train/{run}/model.pt",
        teacher_metrics="data/train/{run}/metrics.json",
        reference="data/reference/{run}.json",
        code=sources("physics", "models", "vmc", "dedup", "stages"),
    output:
        model="data/distill/{run}/bits{bits}/model.pt",
        metrics="data/distill/{run}/bits{bits}/metrics.json",
        history=report(
            "data/distill/{run}/bits{bits}/history.csv",
            caption="../report/distill.rst",
            category="3. Distillation",
            labels={"run": "{run}", "bits": "{bits}"},
        ),
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        distill=P["distill"],
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/distill/{run}_bits{bits}.log",
    benchmark:
        "logs/distill/{run}_bits{bits}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "vqnqs distill --params {PARAMS} --run {wildcards.run} --teacher data/train/{wildcards.run}"
        " --bits {wildcards.bits} --reference {input.reference}"
        " --out-dir data/distill/{wildcards.run}/bits{wildcards.bits} --on-change restart > {log} 2>&1"
