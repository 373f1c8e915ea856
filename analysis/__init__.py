"""From runs to claims: the tidy run table (``collect``), the paper's tables (``tables``; the
multi-domain layout: ``multidomain``; the weak-label pipeline's own table and figure: ``weak``),
figures (``plots``) and the cost of a grid (``runtime``), with the shared number and text formatting
in ``formatting``.

These modules only read runs and write tables and plots. Which runs exist, where they lie and what the
settings and methods are called comes from the workflow's planner (``workflow/planner``: ``layout``,
``vocabulary``), which must be importable: the workflow's jobs and pytest put ``workflow/`` on the
path; by hand, run ``PYTHONPATH=workflow python -m analysis.NAME ...`` from the repository root.

Every module is importable (the tests call its functions) and runnable as ``python -m analysis.NAME``
(the Snakemake rules call it that way).
"""
