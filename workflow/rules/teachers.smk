# Teachers, in teacher jobs: every untrained teacher that an unfinished run needs belongs to one teacher
# set (planned by workflow/scripts/jobs.py from the cost model), whose job trains its teachers with `sublearn teachers`,
# side by side, each on its own data order. A trained teacher (its .json summary, written after its .pt,
# records its key and its data's identity) is in no set, so nothing retrains it; teachers on synthetic
# data live apart, in R/synthetic/teachers.


for _set in TEACHER_SETS.values():

    rule:
        name:
            _set["id"].replace("-", "_")
        input:
            sheet=f"{R}/sheets/{_set['id']}.jsonl",
            cache=CACHE_FILES[_set["dataset"]],
        output:
            _set["outputs"],
        log:
            f"{LOGS}/teachers/{_set['id']}.log",
        params:
            data_dir=DATA_DIRS[_set["dataset"]],
            stack_layers=stack_layers_setting(config["batch"]["stack_layers"]),
            gflops=config["batch"]["gflops"],  # the time left before a first run is done
            start=job_start_line(_set["id"].replace("-", "_"), _set["teachers"], "teachers", _set["seconds"],
                                 f"{LOGS}/teachers/{_set['id']}.log"),
        threads: config["threads"]["teacher"]
        priority: TEACHER_PRIORITY
        resources:
            mem_mb=jobs.rule_resources(config, "teacher")["mem_mb"],
            runtime=_set["runtime"],
            **TORCH_CLUSTER_RESOURCES,
        conda:
            TORCH_ENV
        shell:
            "echo {params.start:q}; "
            "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} python -m sublearn.cli teachers "
            "--sheet {input.sheet:q} --threads {threads} --device \"$SUBLEARN_DEVICE\" "
            "--data-dir {params.data_dir:q} --cache-dir \"$(dirname {input.cache:q})\" --cache-only "
            "--gflops {params.gflops} --stack-layers {params.stack_layers} > {log:q} 2>&1"
