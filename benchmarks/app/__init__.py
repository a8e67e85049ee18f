"""A tiny Django project served by gunicorn for ``benchmarks/pool_bench.py`` (not part of the package).

``DATABASES`` comes from the ``BENCH_DATABASES`` environment variable (JSON) that the benchmark sets for
each variant; ``BENCH_DRIVER`` says which PostgreSQL driver Django must use (see ``wsgi``).
"""
