"""The settings schema: what each option accepts and converts to, and what is derived from it."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from django.test import override_settings

from replicarouter import conf
from replicarouter.checks import CHECK_IDS
from replicarouter.pool import POOL_DEFAULTS, RESET_MODES, PoolOptions
from replicarouter.settings_schema import (
    POOL_OPTIONS,
    REPLICAROUTER_OPTIONS,
    Kind,
    Option,
    Unit,
    defaults,
    invalid_values,
)

ALL_OPTIONS = [*REPLICAROUTER_OPTIONS.values(), *POOL_OPTIONS.values()]


def test_check_ids_are_unique_and_each_is_a_check_id_of_the_checks():
    ids = [option.check_id for option in ALL_OPTIONS]
    assert len(set(ids)) == len(ids)
    assert set(ids) <= set(CHECK_IDS)
    assert REPLICAROUTER_OPTIONS["CLUSTERS"].check_id == "replicarouter.E010"  # the id topology.build uses


def test_names_match_the_tables_keys_and_docs_are_one_line():
    for table in (REPLICAROUTER_OPTIONS, POOL_OPTIONS):
        for name, option in table.items():
            assert option.name == name and name.isupper()
            assert option.doc and "\n" not in option.doc
            assert option.valid(option.default), f"{name}'s default is not valid"


@pytest.mark.parametrize("option", ALL_OPTIONS, ids=lambda o: o.name)
def test_minimum_none_and_types(option: Option) -> None:
    assert option.valid(None) is option.none
    if option.kind in (Kind.NUMBER, Kind.INTEGER):
        assert not option.valid(True) and not option.valid("1")
        assert option.valid(1.5) is (option.kind is Kind.NUMBER)
        assert option.minimum is not None
        assert option.valid(option.minimum) is not option.exclusive
        assert not option.valid(option.minimum - 1)
        assert option.valid(option.minimum + 1)
    elif option.kind is Kind.BOOLEAN:
        assert option.valid(True) and option.valid(False) and not option.valid(1)
    elif option.kind is Kind.STRING:
        assert option.valid("x") and not option.valid(1)
    elif option.kind is Kind.CHOICE:
        assert all(option.valid(choice) for choice in option.choices) and not option.valid("x")
        assert option.default in option.choices and type(option.default) is str


def test_requirements_in_words():
    assert {o.name: o.requirement() for o in ALL_OPTIONS} == {
        "CLUSTERS": "a dict of cluster name -> {'PRIMARY': alias, 'REPLICAS': [...]} or None",
        "REDIS_URL": "a string or None",
        "KEY_PREFIX": "a string",
        "CHECK_INTERVAL": "a positive number",
        "CHECK_TIMEOUT": "a positive number",
        "MAX_LAG_SECONDS": "a positive number",
        "MAX_LAG_BYTES": "a positive number",
        "FALL": "a positive integer",
        "RISE": "a positive integer",
        "STICKY": "one of 'lsn', 'time', 'off'",
        "STICKY_SECONDS": "a positive number",
        "MONOTONIC_READS": "True or False",
        "STICKY_SCOPE": "one of 'session', 'user'",
        "BALANCE": "one of 'round_robin', 'random', 'least_lag'",
        "READ_TIMEOUT": "a positive number or None",
        "RETRY_READS": "True or False",
        "CONNECT_TIMEOUT": "a positive integer",
        "PROMOTE_AFTER": "a positive number or None",
        "SIZE": "an integer >= 1",
        "MAX_OVERFLOW": "an integer >= -1",
        "TIMEOUT": "a number >= 0",
        "RECYCLE": "an integer >= -1 or None",
        "PRE_PING": "True or False",
        "RESET": "one of 'auto', 'always', 'rollback'",
        "RELEASE": "one of 'transaction', 'request'",
        "LIFO": "True or False",
        "LEAK_WARNING": "a number >= 0 or None",
    }


def test_a_minimum_other_than_zero_can_be_exclusive():
    option = Option("X", 5, Kind.INTEGER, "replicarouter.E999", "x", minimum=3, exclusive=True)
    assert option.requirement() == "an integer > 3"
    assert not option.valid(3) and option.valid(4)


def test_conversion():
    assert REPLICAROUTER_OPTIONS["MAX_LAG_BYTES"].convert(1.6e7) == 16_000_000
    assert type(REPLICAROUTER_OPTIONS["MAX_LAG_BYTES"].convert(1.6e7)) is int
    assert REPLICAROUTER_OPTIONS["CHECK_INTERVAL"].convert(1) == 1.0
    assert type(REPLICAROUTER_OPTIONS["CHECK_INTERVAL"].convert(1)) is float
    assert REPLICAROUTER_OPTIONS["READ_TIMEOUT"].convert(None) is None
    assert REPLICAROUTER_OPTIONS["CLUSTERS"].convert({"c": {}}) == {"c": {}}
    assert POOL_OPTIONS["RECYCLE"].convert(None) == -1
    assert POOL_OPTIONS["RECYCLE"].convert(60) == 60


def test_invalid_values_in_table_order_and_defaults():
    found = invalid_values(POOL_OPTIONS, {"RESET": "x", "SIZE": 0, "LIFO": True, "OTHER": 1})
    assert [(option.name, value) for option, value in found] == [("SIZE", 0), ("RESET", "x")]
    assert defaults(POOL_OPTIONS) == POOL_DEFAULTS
    assert defaults(REPLICAROUTER_OPTIONS) == conf.DEFAULTS
    assert RESET_MODES == ("auto", "always", "rollback")


def test_units_of_the_numbers():
    for option in ALL_OPTIONS:
        numeric = option.kind in (Kind.NUMBER, Kind.INTEGER)
        assert (option.unit is not Unit.NONE) is numeric, option.name


def accessors() -> dict[str, typing.Any]:
    return typing.get_type_hints(conf.Settings, vars(conf))


def test_one_accessor_per_replicarouter_option():
    assert list(accessors()) == list(REPLICAROUTER_OPTIONS)
    assert conf.Settings.FALL.__doc__ == REPLICAROUTER_OPTIONS["FALL"].doc
    with pytest.raises(AttributeError, match="read from django.conf.settings"):
        conf.settings.FALL = 3


@pytest.mark.parametrize("name", [n for n in REPLICAROUTER_OPTIONS if n != "CLUSTERS"])
def test_accessors_convert_to_their_declared_type(name: str) -> None:
    (declared,) = typing.get_args(accessors()[name])
    option = REPLICAROUTER_OPTIONS[name]
    samples = [option.default] + ([1] if option.kind in (Kind.NUMBER, Kind.INTEGER) else [])
    for sample in samples:
        if option.valid(sample):
            assert isinstance(option.convert(sample), declared), (name, sample)


@pytest.mark.filterwarnings("ignore:Overriding setting REPLICAROUTER")
def test_accessors_read_the_settings_at_access_time():
    with override_settings(REPLICAROUTER=None):
        for name, option in REPLICAROUTER_OPTIONS.items():
            assert getattr(conf.settings, name) == option.convert(option.default)
    with override_settings(
        REPLICAROUTER={"FALL": 5, "STICKY": "off", "READ_TIMEOUT": None, "CHECK_TIMEOUT": 1}
    ):
        assert conf.settings.FALL == 5
        assert conf.settings.STICKY == "off"
        assert conf.settings.READ_TIMEOUT is None
        assert conf.settings.CHECK_TIMEOUT == 1.0 and type(conf.settings.CHECK_TIMEOUT) is float
        assert conf.settings.RISE == 2


def test_pool_options_fields_are_the_schema_keys_with_its_defaults():
    fields = dataclasses.fields(PoolOptions)
    assert [f.name for f in fields] == [option.field for option in POOL_OPTIONS.values()]
    assert {f.name: f.default for f in fields} == {o.field: o.default for o in POOL_OPTIONS.values()}
    assert PoolOptions.from_settings("x", None) == PoolOptions() == PoolOptions.from_settings("x", {})


def test_pool_options_take_every_key():
    options = PoolOptions.from_settings(
        "x",
        {"SIZE": 3, "MAX_OVERFLOW": 0, "TIMEOUT": 2, "RECYCLE": 60, "PRE_PING": True, "RESET": "rollback",
         "RELEASE": "request", "LIFO": False, "LEAK_WARNING": 30},
    )  # fmt: skip
    assert options == PoolOptions(3, 0, 2.0, 60, True, "rollback", "request", False, 30.0)
    assert type(options.timeout) is float and type(options.leak_warning) is float


def test_a_number_without_a_minimum_accepts_any_number_but_not_a_boolean():
    unbounded = Option("X", 1.0, Kind.NUMBER, "replicarouter.E999", "a number of anything")
    assert unbounded.valid(-5) and unbounded.valid(0) and unbounded.valid(2.5)
    assert not unbounded.valid(True) and not unbounded.valid("1")
    assert unbounded.requirement() == "a number"
