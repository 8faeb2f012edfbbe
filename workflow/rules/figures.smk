# Figures: one plot rule per configured figure, each with its own script and report caption. Beside the
# figure (PNG, vector PDF) the plot writes its summary: every plotted point's mean, bootstrap interval,
# seeds and teacher accuracy (CSV, and HTML for the report).

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
                subcategory=_figure,
                labels={"figure": _figure, "content": "figure"},
            ),
            pdf=f"{R}/figures/{_figure}.pdf",
            summary=report(
                f"{R}/figures/{_figure}_summary.csv",
                caption="../report/summary.rst",
                category="Figures",
                subcategory=_figure,
                labels={"figure": _figure, "content": "summary table (CSV)"},
            ),
            summary_html=report(
                f"{R}/figures/{_figure}_summary.html",
                caption="../report/summary.rst",
                category="Figures",
                subcategory=_figure,
                labels={"figure": _figure, "content": "summary table"},
            ),
        log:
            f"{LOGS}/figures/{_figure}.log",
        params:
            spec=figure_spec(_figure),
            # the script path is formatted when the job runs, so it must come from the job (its params),
            # not from the loop variable
            script=config["figures"][_figure].get("script", f"{_figure}.py"),
        threads: 1
        resources:
            **jobs.rule_resources(config, "plot"),
        conda:
            "../../envs/plot.yaml"
        script:
            "../scripts/{params.script}"
