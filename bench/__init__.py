"""cregistry's benchmark (run it with `make bench` or `python bench/run.py`)."""
