"""Health: ``probe`` measures a node under a deadline, ``rules`` (pure) turn probe results into node states
and a writer election, ``store`` holds this process's snapshot, ``monitor`` runs the loop and shares it
through Redis, ``failover`` promotes a replica when configured to.
"""
