"""From a validated workflow config to runs (``grid``), and from runs to claims: the tidy run table
(``collect``), the paper's tables (``tables``), figures (``plots``) and the cost of a grid (``runtime``).

Every module is importable (the tests call its functions) and runnable as ``python -m analysis.NAME``
(the Snakemake rules call it that way).
"""
