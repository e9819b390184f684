"""face2hbe.loadtest: load testing (`face2hbe loadtest`: Locust's users in locustfile.py, run and judged by
runner.py, on real face crops from crops.py) and, in bench/, the benchmarks."""
