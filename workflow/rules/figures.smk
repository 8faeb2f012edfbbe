# Figures: one plot rule per configured figure, each with its own script and report caption.

for _figure in FIGURES:

    rule:
        name:
            f"plot_{_figure}"
        input:
            table=f"{R}/tables/{_figure}.csv",
        output:
            png=report(
                f"{R}/figures/{_figure}.png",
                caption=caption_for(_figure),
                category="Figures",
                labels={"figure": _figure},
            ),
            pdf=f"{R}/figures/{_figure}.pdf",
        log:
            f"{LOGS}/figures/{_figure}.log",
        params:
            spec=figure_spec(_figure),
            # the script path is formatted when the job runs, so it must come from the job (its params),
            # not from the loop variable
            script=config["figures"][_figure].get("script", f"{_figure}.py"),
        threads: 1
        resources:
            mem_mb=config["resources"]["plot"].get("mem_mb", 4000),
            runtime=config["resources"]["plot"].get("runtime", 15),
        conda:
            "../../envs/plot.yaml"
        script:
            "../scripts/{params.script}"
