rule profile:
    """Local-energy FLOPs (by component) and wall-clock, dense vs dedup, baseline and student."""
    input:
        student="data/distill/{run}/bits{bits}/model.pt",
        student_metrics="data/distill/{run}/bits{bits}/metrics.json",
        baseline="data/train/{run}/model.pt",
        baseline_metrics="data/train/{run}/metrics.json",
        reference="data/reference/{run}.json",
        code=sources("physics", "models", "dedup", "vmc", "profiling", "stages"),
    output:
        table=report(
            "data/profile/{run}/bits{bits}.csv",
            caption="../report/profile.rst",
            category="4. Profile",
            labels={"run": "{run}", "bits": "{bits}"},
        ),
        components="data/profile/{run}/bits{bits}_components.csv",
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        profiling=P["profiling"],
    threads: 1
    resources:
        gpu=GPU,
    log:
        "logs/profile/{run}_bits{bits}.log",
    benchmark:
        "logs/profile/{run}_bits{bits}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "vqnqs profile --params {PARAMS} --run {wildcards.run} --model-dir data/distill/{wildcards.run}/bits{wildcards.bits}"
        " --baseline data/train/{wildcards.run} --reference {input.reference} --out {output.table} > {log} 2>&1"
