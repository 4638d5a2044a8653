"""The identity provider settings: an LDAP or OIDC provider without what it needs is a
configuration error at start-up, not a failed sign-in later."""

from __future__ import annotations

import pytest

from cargohold.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CARGOHOLD_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("auth", "needle"),
    [
        ({"provider": "ldap"}, "ldap.url, ldap.base_dn, ldap.bind_dn"),
        ({"provider": "ldap", "ldap": {"url": "ldap://h", "bind_dn": "cn=a"}}, "ldap.base_dn"),
        ({"provider": "oidc"}, "oidc.issuer, oidc.client_id"),
        ({"provider": "oidc", "oidc": {"issuer": "https://id.example"}}, "oidc.client_id"),
    ],
)
def test_a_provider_without_its_settings_is_refused(auth: dict[str, object], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(auth=auth)


def test_complete_provider_settings_load() -> None:
    ldap = load_settings(
        auth={
            "provider": "ldap",
            "ldap": {
                "url": "ldaps://h",
                "base_dn": "dc=x",
                "bind_dn": "cn=a",
                "timeout_seconds": 3,
            },
        }
    )
    assert ldap.auth.ldap.timeout_seconds == 3
    assert isinstance(ldap.auth.ldap.timeout_seconds, int)  # ldap3 needs an int timeout
    oidc = load_settings(
        auth={"provider": "oidc", "oidc": {"issuer": "https://id.example", "client_id": "c"}}
    )
    assert oidc.auth.oidc.redirect_uri == ""
    # The database provider needs neither.
    assert load_settings().auth.provider == "database"
