# Students: one job per run (figure, panel, grid point, seed), distilled from its shared teacher.
# The runner writes layer_metrics.csv, perturbations.csv and config.json into the run folder first and
# runs.csv last (atomically), so runs.csv alone marks a complete run; declaring one output per job keeps
# planning ~16,000 jobs fast.


rule student:
    input:
        unpack(student_inputs),
    output:
        runs=f"{R}/runs/{{figure}}/{{panel}}/{{point}}/seed{{seed}}/runs.csv",
    log:
        f"{LOGS}/runs/{{figure}}/{{panel}}/{{point}}/seed{{seed}}.log",
    params:
        argv=student_argv,
        device=config["device"],
        data_dir=data_dir_of_input,
    threads: config["threads"]["student"]
    resources:
        mem_mb=student_mem_mb,
        runtime=student_runtime,
    conda:
        TORCH_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} python -m sublearn.cli student {params.argv} "
        "--threads {threads} --device {params.device} --data-dir {params.data_dir:q} "
        '--cache-dir "$(dirname {input.cache:q})" --teacher-checkpoint {input.teacher:q} '
        '--run-dir "$(dirname {output.runs:q})" > {log:q} 2>&1'
