"""The demo (`make demo`, `cdrec demo`): both halves in one place, each in its own process.

* ``demo.train`` (torch): data -> SASRec + CDSRec -> evaluation table -> cold-start bridge -> the hand-off files;
* ``demo.serve`` (torch-free, imports core and service only): export, verify, Redis, seed, serve, refresh, HTTP;
* ``demo.cli``: runs the two halves one after the other as child processes (``python -m demo``), so the serving
  half never shares a process with torch. Import contracts in pyproject.toml keep it that way.
"""
