"""Helpers that the tests and the benchmarks both import: plain functions, classes and context managers. The
pytest fixtures built on them are in tests/conftest.py; a benchmark imports ``tests.support`` with the repository
root on ``sys.path``.

- ``processes``: a free port on 127.0.0.1, a process started in its own session, stopping its whole process
  group, waiting until a started service answers.
- ``s3``: moto's S3 server on 127.0.0.1 (stopped and started again at will) and the environment that reaches it.
- ``prefect_api``: the environment the services need, Prefect's temporary API, and what it holds of a flow run
  (logs, task run states, retries).
- ``dask_cluster``: a LocalCluster of worker processes, and its workers seen and killed from outside.
- ``faults``: the soak (benchmarks/soak.py, tests/test_faults.py): seeded shapes images, a fault injector, a run
  under faults and its rerun.

Nothing here imports Prefect, Dask, boto or moto when it is imported: each function imports what it uses.
"""
