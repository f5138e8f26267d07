"""The chaos run (issue 11): the real workers under faults, checked by an independent oracle.

`python -m bench.chaos --seed N` (docs/chaos.md): a seeded trader (traffic.py) drives many
sessions through a redis-server and a PostgreSQL database of the run's own while faults.py
kills, stops and restarts the workers, Redis and PostgreSQL connections; after quiescence
checker.py compares what the workers left with what oracle.py (docs/contract.md alone)
says must be true.
"""
