"""What replicarouter tells operators: ``report`` (``status()`` and replicastatus), ``stats`` (counters),
``metrics`` (Prometheus), ``logs`` (JSON formatter for the structured log records).
"""
