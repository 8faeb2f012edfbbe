# Students, in batch jobs: every unfinished run belongs to one batch (planned by workflow/scripts/jobs.py
# from the runner's grouping and cost model), whose job computes its runs with `sublearn batch`, students that share a teacher and a noise
# stream in lockstep. A finished run (its folder holds runs.csv, written last and atomically) is in no
# batch, so nothing ever recomputes it; a deleted or killed run is simply unfinished at the next planning.
# Run folders are named by the run key, so a run that several panels request is computed once.


rule sheet:
    """A batch's run sheet (id, run_dir, typed settings per run) or a teacher set's teacher sheet (id, out,
    typed settings per teacher): the runner's input. params.stale: the batch's runs whose folder holds an
    unfinished result (a lost file, a cut row): when it changes, the sheet and its batch are made again."""
    output:
        sheet=f"{R}/sheets/{{sheet}}.jsonl",
    log:
        f"{LOGS}/sheets/{{sheet}}.log",
    params:
        text=sheet_text_of,
        stale=stale_runs_of,
    localrule: True
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/write_sheet.py"


for _batch in BATCHES.values():

    rule:
        name:
            f"batch_{_batch['id']}"
        input:
            sheet=f"{R}/sheets/{_batch['id']}.jsonl",
            teachers=_batch["teachers"],
            cache=CACHE_FILES[_batch["dataset"]],
        output:
            _batch["outputs"],
        log:
            f"{LOGS}/batches/{_batch['id']}.log",
        params:
            data_dir=DATA_DIRS[_batch["dataset"]],
            memory_mb=config["batch"]["memory_mb"],
            gflops=config["batch"]["gflops"],  # the time left before a first run is done
            start=job_start_line(f"batch_{_batch['id']}", _batch["runs"], "runs", _batch["seconds"],
                                 f"{LOGS}/batches/{_batch['id']}.log"),
            stack_layers=stack_layers_setting(config["batch"]["stack_layers"]),
            teacher_dir=lambda w, input: os.path.dirname(input.teachers[0]),
        threads: config["threads"]["student"]
        # longest first (after the teachers): the short jobs then fill the cores at the end instead of one
        # long job alone
        priority: _batch["priority"]
        resources:
            mem_mb=_batch["mem_mb"],
            runtime=_batch["runtime"],
            **TORCH_CLUSTER_RESOURCES,
        conda:
            TORCH_ENV
        shell:
            "echo {params.start:q}; "
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} python -m sublearn.cli batch "
            "--sheet {input.sheet:q} --teacher-dir {params.teacher_dir:q} --threads {threads} "
            "--device \"$SUBLEARN_DEVICE\" --data-dir {params.data_dir:q} --cache-dir \"$(dirname {input.cache:q})\" "
            "--cache-only "
            "--max-memory-mb {params.memory_mb} --gflops {params.gflops} --stack-layers {params.stack_layers} "
            "> {log:q} 2>&1"
