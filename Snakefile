# Snakemake workflow reproducing the paper's figures with the sublearn runner.
# Rules live in workflow/rules, scripts in workflow/scripts, settings in config/ (see config/README.md).

from snakemake.utils import min_version, validate

min_version("9.0")


# a YAML mistake in config/config.yaml: its line and column
include: "workflow/rules/config_yaml.smk"


configfile: "config/config.yaml"


# a short message naming the bad key first, then Snakemake's validation against the same schema
include: "workflow/rules/validate.smk"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


onstart:
    hold_results_lock()
    write_status_plan()  # for `sublearn status RESULTS_DIR`


# where the figures, tables, scorecard and report are, and what the claims say
onsuccess:
    logger.info(build_summary.end_summary(R, FIGURES, workflow.overwrite_configfiles))


# The targets name every run too: Snakemake does not redo a deleted intermediate file on its own when
# the files made from it are up to date, so a deleted or killed run would otherwise stay missing.
rule all:
    """Every configured figure (PNG + PDF + summary), its tables and its runs."""
    input:
        expand(f"{R}/figures/{{figure}}{{ext}}", figure=FIGURES, ext=[".png", ".pdf", "_summary.csv"]),
        expand(f"{R}/tables/{{figure}}.csv", figure=FIGURES),
        [run for figure in FIGURES for run in FIG_RUNS[figure]],
        f"{R}/claims.csv",
    default_target: True
    localrule: True


# One target per figure: `snakemake --cores N fig2`
for _figure in FIGURES:

    rule:
        name:
            _figure
        input:
            f"{R}/figures/{_figure}.png",
            f"{R}/figures/{_figure}.pdf",
            f"{R}/figures/{_figure}_summary.csv",
            f"{R}/tables/{_figure}.csv",
            FIG_RUNS[_figure],
        localrule: True


include: "workflow/rules/teachers.smk"
include: "workflow/rules/batches.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/claims.smk"


check_targets()  # a typo in a target: the valid ones
log_plan()  # what the targets will compute
