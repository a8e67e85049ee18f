"""Read-your-writes: ``policy`` (pure: cookies, identities, which replicas caught up), ``store`` (positions in
Redis, the primary's WAL position), ``handoff`` (carrying a request's position into a background job).
"""
