"""Experiments and their results: grids (``grid``), rows and claims (``rows``), the grid runner (``runner``), tables
rendered from rows (``render``) and the documents generated from committed rows and run logs (``docs``).

Data flows one way: a grid YAML -> ``run_grid`` -> ``<out>/rows.jsonl`` -> ``render`` -> markdown. Nothing in a
table or a generated page is typed by hand. Timing benchmarks (``benchmarks/*.py --out OUT``) use the measurement
helpers: one row per measurement (``measurement``, ``record``), prose in ``OUT/meta.json`` (``read_meta``,
``write_meta``), ``OUT.md`` rendered from both (``write_measurements``, ``render_document``).
"""
from .grid import Cell, Grid, Method, load_grid, procedure_suffix, protocol_key
from .render import (better, commands_line, distinct, fmt, mean_std, measurement_args, measurement_out,
                     provenance_lines, render, render_document, rendered_only, verdict, write_measurements,
                     write_table)
from .rows import claim, measurement, read_meta, read_rows, record, write_meta
from .runner import run_grid

__all__ = ["Cell", "Grid", "Method", "better", "claim", "commands_line", "distinct", "fmt", "load_grid", "mean_std", "measurement",
           "measurement_args", "measurement_out", "procedure_suffix", "protocol_key", "provenance_lines",
           "read_meta", "read_rows", "record", "render", "render_document", "rendered_only", "run_grid", "verdict",
           "write_measurements", "write_meta", "write_table"]
