"""Routing: which alias serves each query (router, routing context, pure selection/topology/statement rules).

``router`` asks ``selection`` (pure) over the topology (pure), the routing context (contextvars) and the
health store; ``middleware`` and ``tasks`` open a routing context per request and per task.
"""
