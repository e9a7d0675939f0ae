rule reference:
    """Exact (free fermions, Lanczos) or literature ground-state energy of one run."""
    input:
        literature="data/reference/literature.csv",
        code=sources("physics"),
    output:
        report(
            "data/reference/{run}.json",
            caption="../report/reference.rst",
            category="1. References",
            labels={"run": "{run}"},
        ),
    params:
        settings=lambda wildcards: P["systems"][wildcards.run],
        reference=P["reference"],
    log:
        "logs/reference/{run}.log",
    benchmark:
        "logs/reference/{run}.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "vqnqs reference --params {PARAMS} --run {wildcards.run} --out {output} > {log} 2>&1"
