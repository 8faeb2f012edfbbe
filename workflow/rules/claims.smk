# The paper's claims, checked: config/claims.yaml (validated here, when the workflow is read) evaluated on
# the merged tables of the configured figures (workflow/scripts/claims.py). Claims of figures that are not
# configured are listed as not evaluated. The scorecard is the first category of the HTML report and its
# caption is the scorecard itself (rows linked to the figures), which workflow/report/workflow.rst shows on
# the report's first page.

import claims as claimcheck  # workflow/scripts/claims.py (on sys.path through common.smk)

# the working directory's claims file, else the workflow's own (a test or a second results folder that
# brings only a config/config.yaml checks the paper's claims)
CLAIMS_FILE = Path("config/claims.yaml") if Path("config/claims.yaml").is_file() else REPO / "config" / "claims.yaml"
try:
    CLAIMS = claimcheck.load_claims(CLAIMS_FILE)
    # a condition, x or `at` value that the configured grids lack is an error now, not a verdict later
    claimcheck.check_claims(CLAIMS, {figure: figure_spec(figure) for figure in FIGURES}, str(CLAIMS_FILE),
                            claimcheck.paper_specs())
except claimcheck.ClaimsError as exc:
    raise ConfigError(str(exc)) from None

# The report lists categories in alphabetical order: "Claims scorecard" comes before "Figures".
CLAIMS_CATEGORY = "Claims scorecard"


rule evaluate_claims:
    input:
        claims=str(CLAIMS_FILE),
        tables=expand(f"{R}/tables/{{figure}}.csv", figure=FIGURES),
    output:
        csv=report(
            f"{R}/claims.csv",
            caption="../report/claims.rst",
            category=CLAIMS_CATEGORY,
            labels={"content": "scorecard (CSV)"},
        ),
        # the report's caption of the scorecard is the scorecard, written by this job: an absolute path,
        # read when the report is made
        html=report(
            f"{R}/claims.html",
            caption=os.path.abspath(f"{R}/claims.rst"),
            category=CLAIMS_CATEGORY,
            labels={"content": "scorecard"},
        ),
        rst=f"{R}/claims.rst",
    log:
        f"{LOGS}/claims.log",
    params:
        claims=CLAIMS,
        specs=[figure_spec(figure) for figure in FIGURES],
    threads: 1
    resources:
        **jobs.rule_resources(config, "plot"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/scorecard.py"


rule claims:
    """The claims scorecard (results/claims.csv and .html) and the tables it reads."""
    input:
        rules.evaluate_claims.output.csv,
        rules.evaluate_claims.output.html,
    localrule: True
