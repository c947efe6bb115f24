"""Services: Optuna sweeps of lesson5 runs: study files (`spec`), the driver and its workers, storage, claim verdicts
and reports. `python -m lesson5.sweep <study> ...` runs one; `python -m lesson5.report <study>` reports it."""
