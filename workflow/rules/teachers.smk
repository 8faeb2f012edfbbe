# Teachers: one job per distinct teacher key, shared by every student whose teacher settings are equal.
# Teachers on synthetic data (synthetic_mnist, synthetic_emnist) live apart, in R/synthetic/teachers.


rule teacher:
    input:
        cache=teacher_cache,
    output:
        pt=f"{R}/teachers/{{key}}.pt",
        summary=f"{R}/teachers/{{key}}.json",
    log:
        f"{LOGS}/teachers/{{key}}.log",
    params:
        argv=teacher_argv_of,
        data_dir=data_dir_of_input,
    threads: config["threads"]["teacher"]
    priority: TEACHER_PRIORITY
    resources:
        mem_mb=config["resources"]["teacher"].get("mem_mb", 4000),
        runtime=config["resources"]["teacher"].get("runtime", 30),
    conda:
        TORCH_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} python -m sublearn.cli teacher {params.argv} "
        "--threads {threads} --device \"$SUBLEARN_DEVICE\" --data-dir {params.data_dir:q} "
        '--cache-dir "$(dirname {input.cache:q})" --cache-only --teacher-out {output.pt:q} > {log:q} 2>&1'


use rule teacher as synthetic_teacher with:
    output:
        pt=f"{R}/synthetic/teachers/{{key}}.pt",
        summary=f"{R}/synthetic/teachers/{{key}}.json",
    log:
        f"{LOGS}/synthetic/teachers/{{key}}.log",
