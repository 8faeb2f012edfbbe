# Tables: per figure, one tidy CSV (grid coordinates + reference columns) and the reference aggregates.
# Runs are joined to the figure's requests (panel, point, seed) on their run key, never on labels.


rule merge_runs:
    input:
        runs=lambda w: FIG_RUNS[w.figure],
    output:
        tidy=f"{R}/tables/{{figure}}.csv",
        runs=f"{R}/tables/{{figure}}/runs_all_seeds.csv",
        layer_metrics=f"{R}/tables/{{figure}}/layer_metrics_all_seeds.csv",
        perturbations=f"{R}/tables/{{figure}}/perturbations_all_seeds.csv",
    log:
        f"{LOGS}/tables/{{figure}}.log",
    params:
        points=lambda w: FIG_POINTS[w.figure],
        requests=lambda w: FIG_REQUESTS[w.figure],
        allow_mixed_data=config["allow_mixed_data"],
        # rows made from generated data say so (column data)
        synthetic=sorted(SYNTHETIC),
    threads: 1
    resources:
        **jobs.rule_resources(config, "merge"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/merge.py"
