"""Health: ``probe`` measures the nodes under a deadline, ``rules`` (pure) judge a round of probe results
into node states and transitions, ``election`` (pure) picks the writer, ``events`` logs the transitions,
``shared`` is the Redis lease and snapshot processes share, ``store`` holds this process's snapshot,
``monitor`` runs the loop, ``failover`` promotes a replica when configured to.
"""
