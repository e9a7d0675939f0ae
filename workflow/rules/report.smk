rule report:
    """results/report.md: Table 1 beside the paper's numbers, figures and the CSVs behind them."""
    input:
        expand("data/reference/{run}.json", run=RUNS),
        expand("data/train/{run}/{name}", run=RUNS, name=["metrics.json", "history.csv"]),
        expand("data/distill/{run}/bits{bits}/metrics.json", run=RUNS, bits=BITS),
        expand("data/profile/{run}/bits{bits}{suffix}.csv", run=RUNS, bits=BITS, suffix=["", "_components"]),
        [f"data/train_vq/{job['run']}/bits{job['bits']}/{name}" for job in VQ_RUNS for name in ("metrics.json", "history.csv")],
        [f"data/profile_vq/{job['run']}/bits{job['bits']}{suffix}.csv" for job in VQ_RUNS for suffix in ("", "_components")],
        "data/reference/paper_table1.csv",
        # The engines' scaling study (benchmarks/incremental_scaling.py), measured offline and committed.
        expand("benchmarks/results/incremental_tfim_untrained_d256_{bits}bits.json", bits=[6, 24]),
        code=sources("report", "profiling", "vmc"),
    output:
        report="results/report.md",
        # The captions are the report stage's own outputs (vqnqs.report.captions), rendered by --report.
        table="results/table1.csv",
        table_html=report(
            "results/table1.html", caption="../../results/captions/table1.rst", category="0. Table 1 and figures"
        ),
        fits="results/tfim_scaling_fits.csv",
        summary="results/summary.json",
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../../results/captions/figures.rst",
            category="0. Table 1 and figures",
            labels={"figure": "{name}"},
        ),
        captions=directory("results/captions"),
    log:
        "logs/report.log",
    benchmark:
        "logs/report.benchmark.tsv",  # wall time, CPU time and peak memory of the job
    shell:
        "vqnqs report --params {PARAMS} --data-dir data --out-dir results > {log} 2>&1"
