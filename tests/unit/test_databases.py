"""Database URLs: written once (core.databases) for every driver the project talks to a database with."""

from __future__ import annotations

import pytest

from core.databases import libpq_url, normalise_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///state/x.db", "sqlite:///state/x.db"),
    ],
)
def test_a_postgresql_url_names_the_installed_driver(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Any spelling SQLAlchemy takes becomes what libpq (the ADBC driver) takes, with engine_for's timeout.
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:s3cret@h:5432/db?connect_timeout=3"),
        ("postgresql+psycopg://u@h/db", "postgresql://u@h/db?connect_timeout=3"),
        ("postgres://u@h/db?sslmode=require", "postgresql://u@h/db?connect_timeout=3&sslmode=require"),
        # A timeout of the URL's own wins.
        ("postgresql+psycopg://u@h/db?connect_timeout=10", "postgresql://u@h/db?connect_timeout=10"),
    ],
)
def test_libpq_url_keeps_the_password_and_sets_a_connect_timeout(url: str, expected: str) -> None:
    assert libpq_url(url) == expected
