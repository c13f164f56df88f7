"""The domain-inversion benchmark: every method on images the generator cannot render, with intervals.

- ``suites``: the named suites (which sets, how many images, seeds, methods, step budgets) and their images;
- ``run``: one set at one seed: a shared W pivot per image, every method's results at every budget;
- ``drift``: how far a tuned generator's samples moved from the original's (FD on AlexNet features);
- ``stats``: means with bootstrap intervals, ratios at equal time and equal reconstruction, the goals;
- ``plots``: the quality-against-time curves.

``benchmarks/domain_inversion.py`` runs a suite in one process; the ``domain-benchmark`` flow (and the nightly
deployment) runs one on Dask workers. Results: docs/benchmark.md.
"""
