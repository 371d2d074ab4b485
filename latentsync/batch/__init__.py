"""Batches: many lip-sync jobs from a jobs file, models loaded once, resumable; in this process or on Ray.

    jobs.py           the jobs file, read and checked whole (``read_jobs``); each job's settings (``settle``)
    manifest.py       the record of finished jobs, held by one batch at a time; what counts as complete
    local.py          the jobs run one after another in this process (``JobRunner``, ``run_jobs``)
    ray_runner.py     the jobs on a Ray cluster (``--ray``), whole or cut into segments (``--split``)
    local_cluster.py  a local Ray cluster written down, so that the next batch ends a killed driver's
    cli.py            the ``batch`` command (its help: that module's docstring)
"""
