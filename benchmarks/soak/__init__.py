"""The Django project of ``benchmarks/consistency_soak.py``, served by gunicorn (not part of the package).

Django's defaults where it matters: database sessions (``SessionMiddleware`` saves them after the view),
``ReplicaRouter`` and ``ReplicaRouterMiddleware`` in the order the soak is told (``SOAK_ORDER``).
"""
