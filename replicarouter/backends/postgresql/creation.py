"""Test database creation for the pooled backend: no pooled connection may block CREATE/DROP DATABASE."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import creation as django_creation

from replicarouter import pool as pools

#: settings that make a TEST MIRROR alias reach the server of the alias it mirrors
MIRRORED_KEYS = ("NAME", "HOST", "PORT", "USER", "PASSWORD")


class DatabaseCreation(django_creation.DatabaseCreation):
    """Django's postgresql test-database creation, plus pool disposal and full TEST MIRROR settings."""

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        pools.registry.dispose()
        return super()._create_test_db(verbosity, autoclobber, keepdb)

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> None:
        # ``manage.py test --parallel N``: CREATE DATABASE … TEMPLATE fails while any session is connected
        # to the source, and every alias of this process may hold idle pooled connections to it
        pools.registry.dispose()
        super()._clone_test_db(suffix, verbosity, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        # idle pooled connections to the test database would make DROP DATABASE fail with
        # "database ... is being accessed by other users"; connections still checked out by threads a
        # test left behind would too, so (PostgreSQL 13+) the drop also ends those sessions
        pools.registry.dispose()
        force = " WITH (FORCE)" if self.connection.pg_version >= 130000 else ""
        with self._nodb_cursor() as cursor:
            cursor.execute(f"DROP DATABASE {self.connection.ops.quote_name(test_database_name)}{force}")

    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        """Point this alias at the database it mirrors during tests.

        Django copies only NAME, so a "mirror" would read a test database of the same name on its own
        server. We copy HOST, PORT, USER and PASSWORD too, so that a mirror reads exactly what the tests
        wrote. For a real streaming replica (it receives the test database by replication, as with
        ``replicarouter.testing``) set ``TEST["MIRROR_CONNECTION"] = False`` to keep its own server and
        copy NAME only.
        """
        settings_dict = self.connection.settings_dict
        keys = MIRRORED_KEYS if settings_dict.get("TEST", {}).get("MIRROR_CONNECTION", True) else ("NAME",)
        for key in keys:
            settings_dict[key] = primary_settings_dict[key]
