"""consentsync.yaml: the starter parses; every error names the file, the line and the field."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from consentsync.config import (
    CONFIG_ENV,
    ERASURE_KEY_ENV,
    Config,
    ConfigError,
    default_config_path,
    load_config,
    parse_config,
    resolve_sqlite_url,
    starter_config_text,
    write_starter,
)
from consentsync.domain import LawfulBasis, ObjectionHandling
from consentsync.yamlfile import read_document

CONFIG = Path("/srv/consentsync/consentsync.yaml")

# A minimal valid file; the tests below break it one line at a time.
MINIMAL = """\
version: 1
ledger:
  url: sqlite:///ledger.db
purposes:
  - key: newsletter
    name: Newsletter
    direct_marketing: true
    default_basis: consent
  - key: billing
    name: Billing
    default_basis: contract
"""


def error_of(text: str, path: Path = CONFIG) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, path)
    return str(raised.value)


def assert_error_at(text: str, where: str, *says: str) -> str:
    """Parse ``text`` expecting a ConfigError whose message starts with ``<file>:<where>`` (the line
    and the field) and contains each of ``says``; returns the message for the checks left."""
    message = error_of(text)
    assert message.startswith(f"{CONFIG}:{where}"), message
    for part in says:
        assert part in message, message
    return message


# --- the starter config -----------------------------------------------------------------------


class TestStarterConfig:
    def test_parses(self) -> None:
        config = parse_config(starter_config_text(), CONFIG)
        assert set(config.purposes) == {"email_marketing", "profiling", "service"}
        assert config.channels == ("email", "phone", "sms", "post")
        assert config.settings.version == 1

    def test_email_marketing(self) -> None:
        purpose = parse_config(starter_config_text(), CONFIG).purposes["email_marketing"]
        assert purpose.direct_marketing is True
        assert purpose.default_basis is LawfulBasis.CONSENT
        assert purpose.validity_days == 730
        assert purpose.objection_handling is ObjectionHandling.AUTO_UPHOLD
        assert purpose.channels == ("email",)

    def test_profiling(self) -> None:
        purpose = parse_config(starter_config_text(), CONFIG).purposes["profiling"]
        assert purpose.direct_marketing is False
        assert purpose.default_basis is LawfulBasis.LEGITIMATE_INTERESTS
        assert purpose.objection_handling is ObjectionHandling.MANUAL_REVIEW
        assert purpose.validity_days is None

    def test_service(self) -> None:
        purpose = parse_config(starter_config_text(), CONFIG).purposes["service"]
        assert purpose.direct_marketing is False
        assert purpose.default_basis is LawfulBasis.CONTRACT
        # No handling of its own: the policy-wide default applies.
        assert purpose.objection_handling is ObjectionHandling.AUTO_UPHOLD
        # No channels of its own: every configured channel.
        assert purpose.channels == ("email", "phone", "sms", "post")

    def test_policy(self) -> None:
        config = parse_config(starter_config_text(), CONFIG)
        assert config.policy.trusted_sources == frozenset(
            {"web_form", "preference_center", "double_opt_in", "ops"}
        )
        assert config.settings.policy.requested_stale_after_days == 30
        assert config.settings.secrets.erasure_hmac_key_file == "consentsync.key"

    def test_ledger_next_to_the_config(self) -> None:
        config = parse_config(starter_config_text(), CONFIG)
        assert config.ledger_url == "sqlite:////srv/consentsync/consentsync.db"

    def test_policy_default_objection_handling_reaches_purposes_without_their_own(self) -> None:
        text = starter_config_text().replace(
            "\n  objection_handling: auto_uphold\n",  # the policy's (purposes' are indented more)
            "\n  objection_handling: manual_review\n",
        )
        assert text != starter_config_text()
        purposes = parse_config(text, CONFIG).purposes
        assert purposes["service"].objection_handling is ObjectionHandling.MANUAL_REVIEW
        assert purposes["email_marketing"].objection_handling is ObjectionHandling.AUTO_UPHOLD

    def test_a_duration_past_its_bound_is_refused_where_it_is_written(self) -> None:
        """Extra digits passed validation, then overflowed a date at the first command using them
        ("the input holds a value the ledger cannot store or compare")."""
        lines = starter_config_text().splitlines()
        for setting, value in (("validity_days", "3000000"), ("upkeep_minutes", "99999999999")):
            text = starter_config_text()
            if setting not in text:
                text += "\nhub:\n  upkeep_minutes: 0\n"
                lines = text.splitlines()
            number = next(n for n, line in enumerate(lines, 1) if line.strip().startswith(f"{setting}:"))
            changed = list(lines)
            changed[number - 1] = lines[number - 1].split(":", 1)[0] + f": {value}"
            assert_error_at("\n".join(changed) + "\n", f"{number}: ", setting, "less than or equal")
        for lag in (".nan", ".inf"):
            connector = (
                "connectors:\n  - name: x\n    vendor: salesforce\n    mappings: [x.yaml]\n    settings: {}\n"
                f"    signpost_lag_seconds: {lag}\n"
            )
            message = error_of(starter_config_text() + connector)
            assert "signpost_lag_seconds" in message, message

    def test_aliases_that_expand_without_end_are_refused_before_they_are_walked(self) -> None:
        """A few hundred bytes of aliases of aliases took 5.6 GB and a minute (then a MemoryError
        traceback); anchors used as people use them still load."""
        bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        bomb += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
        message = error_of("\n".join(bomb) + "\n")
        assert message.startswith(f"{CONFIG}: its anchors and aliases expand to more than 100,000")
        shared = "base: &base {a: 1, b: [x, y]}\nfirst: *base\nsecond: {<<: *base, b: [z]}\n"
        data, _lines = read_document(shared, CONFIG, error=ConfigError)
        assert data["first"] == {"a": 1, "b": ["x", "y"]} and data["second"] == {"a": 1, "b": ["z"]}


# Configs broken one way each, and how their error message starts after the file's name: the
# line, the field and what is wrong with it.
BROKEN = {
    "unknown_key_in_a_section": (
        MINIMAL.replace("  url: sqlite:///ledger.db\n", "  url: x\n  pool: 5\n"),
        "4: unknown key 'pool' in ledger: accepted are url",
    ),
    "duplicate_purpose_key": (
        MINIMAL.replace("key: billing", "key: newsletter"),
        "9: purposes[1].key: duplicate purpose key 'newsletter'",
    ),
    "missing_required_key_in_a_purpose": (
        MINIMAL.replace("    name: Billing\n", ""),
        "9: missing required key 'purposes[1].name'",
    ),
    "missing_purposes": (
        "version: 1\nledger:\n  url: sqlite:///x.db\n",
        "1: missing required key 'purposes'",
    ),
    "empty_purposes": ("purposes: []\n", "1: purposes: "),
    "unknown_channel_in_a_purpose": (
        MINIMAL + "    channels: [fax]\n",
        "12: purposes[1].channels: unknown channel 'fax': accepted are email, phone, sms, post",
    ),
    "unsupported_version": (MINIMAL.replace("version: 1", "version: 2"), "1: version: "),
}


# --- errors name the file, the line and the field -------------------------------------------


class TestErrors:
    def test_minimal_is_valid(self) -> None:
        assert set(parse_config(MINIMAL, CONFIG).purposes) == {"newsletter", "billing"}

    def test_unknown_top_level_key(self) -> None:
        message = assert_error_at(
            MINIMAL.replace("ledger:\n", "colour: blue\nledger:\n"),
            "2: ",
            "unknown key 'colour' in the top level",
        )
        assert (
            "accepted are audit, channels, connectors, hub, ledger, policy, purposes, secrets, version, web"
            in message
        )

    def test_unknown_key_inside_second_purpose(self) -> None:
        message = assert_error_at(
            MINIMAL.replace("    name: Billing\n", "    name: Billing\n    owner: finance\n"),
            "11: ",
            "unknown key 'owner' in purposes[1]",
        )
        for key in ("key", "name", "default_basis", "direct_marketing", "validity_days"):
            assert key in message.split("accepted are", 1)[1]

    def test_bad_enum_value_lists_accepted_values(self) -> None:
        message = assert_error_at(
            MINIMAL.replace("default_basis: contract", "default_basis: contrakt"),
            "11: purposes[1].default_basis: ",
            "'contrakt'",
        )
        for basis in LawfulBasis:
            assert basis.value in message

    def test_bad_objection_handling(self) -> None:
        text = MINIMAL + "policy:\n  objection_handling: sometimes\n"
        message = assert_error_at(text, "13: policy.objection_handling: ")
        assert "auto_uphold" in message and "manual_review" in message

    def test_bad_purpose_key_shape(self) -> None:
        message = assert_error_at(MINIMAL.replace("key: billing", "key: Billing-2"), "9: purposes[1].key: ")
        assert "lower-case" in message and "'Billing-2'" in message

    def test_out_of_range_value(self) -> None:
        text = MINIMAL.replace(
            "    default_basis: consent\n", "    default_basis: consent\n    validity_days: 0\n"
        )
        assert_error_at(text, "9: purposes[0].validity_days: ", "got 0")

    @pytest.mark.parametrize(("text", "starts"), BROKEN.values(), ids=BROKEN.keys())
    def test_error_names_the_line_and_the_field(self, text: str, starts: str) -> None:
        assert_error_at(text, starts)

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("version: 1\nledger:\n  url: x\n bad: 2\npurposes: []\n", 4),
            ("version: 1\nledger: {url: x\n", 3),
            ("version: 1\n\tledger: {}\n", 2),
            # A character YAML does not allow (PyYAML's reader refuses it before parsing: it was
            # a traceback), and a lone surrogate (libyaml encodes the text as UTF-8).
            ('version: 1\nledger:\n  url: "a\x07b"\n', 3),
            ("version: 1\nledger: {url: x}\n# \x00\n", 3),
            ('version: 1\nledger: {url: "\ud800"}\n', 2),
        ],
        ids=["indentation", "unclosed-flow", "tab", "control-character", "nul-in-a-comment", "surrogate"],
    )
    def test_invalid_yaml(self, text: str, line: int) -> None:
        assert_error_at(text, f"{line}: invalid YAML: ")

    @pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n"])
    def test_top_level_must_be_a_mapping(self, text: str) -> None:
        message = error_of(text)
        assert message == f"{CONFIG}:1: expected a mapping of settings at the top level"

    def test_load_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nowhere.yaml"
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert str(raised.value).startswith(f"{path}: config file not found")
        assert "consentsync init" in str(raised.value)

    def test_load_reports_the_real_path(self, tmp_path: Path) -> None:
        path = tmp_path / "broken.yaml"
        path.write_text(MINIMAL.replace("key: billing", "key: newsletter"), encoding="utf-8")
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert str(raised.value).startswith(f"{path}:9: ")


# --- environment expansion --------------------------------------------------------------------


class TestEnvironment:
    def test_expansion(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PGPASSWORD", "s3cret")
        monkeypatch.setenv("PGHOST", "db.internal")
        text = MINIMAL.replace(
            "url: sqlite:///ledger.db",
            "url: postgresql+psycopg://app:${PGPASSWORD}@${PGHOST}:5432/consentsync",
        )
        config = parse_config(text, CONFIG)
        assert config.ledger_url == "postgresql+psycopg://app:s3cret@db.internal:5432/consentsync"

    def test_expanded_value_is_validated_as_its_field(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NEWSLETTER_DAYS", "365")
        text = MINIMAL.replace(
            "    default_basis: consent\n",
            "    default_basis: consent\n    validity_days: ${NEWSLETTER_DAYS}\n",
        )
        assert parse_config(text, CONFIG).purposes["newsletter"].validity_days == 365

    def test_expansion_is_not_recursive(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OUTER", "${INNER}")
        monkeypatch.delenv("INNER", raising=False)
        text = MINIMAL.replace("url: sqlite:///ledger.db", "url: sqlite:///${OUTER}")
        assert parse_config(text, CONFIG).settings.ledger.url == "sqlite:///${INNER}"

    def test_text_without_references_is_untouched(self) -> None:
        text = MINIMAL.replace("name: Billing", "name: Billing $5 {x} $HOME")
        assert parse_config(text, CONFIG).purposes["billing"].name == "Billing $5 {x} $HOME"

    def test_missing_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("CONSENTSYNC_TEST_UNSET_VAR", raising=False)
        text = MINIMAL.replace("url: sqlite:///ledger.db", "url: ${CONSENTSYNC_TEST_UNSET_VAR}")
        message = error_of(text)
        assert message == (
            f"{CONFIG}:3: ledger.url: environment variable CONSENTSYNC_TEST_UNSET_VAR is not set"
        )

    def test_missing_variable_in_a_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("CONSENTSYNC_TEST_UNSET_VAR", raising=False)
        text = MINIMAL + "policy:\n  trusted_sources:\n    - web_form\n    - ${CONSENTSYNC_TEST_UNSET_VAR}\n"
        assert_error_at(text, "15: policy.trusted_sources[1]: ", "CONSENTSYNC_TEST_UNSET_VAR is not set")


# --- paths ------------------------------------------------------------------------------------


class TestLedgerUrl:
    def test_relative_sqlite_path_resolved_against_config_dir(self, tmp_path: Path) -> None:
        path = tmp_path / "etc" / "consentsync.yaml"
        text = MINIMAL.replace("sqlite:///ledger.db", "sqlite:///data/ledger.db")
        config = parse_config(text, path)
        expected = (tmp_path / "etc" / "data" / "ledger.db").resolve()
        assert config.ledger_url == f"sqlite:///{expected}"

    def test_relative_path_does_not_depend_on_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "consentsync.yaml"
        path.write_text(MINIMAL, encoding="utf-8")
        monkeypatch.chdir("/")
        assert load_config(path).ledger_url == f"sqlite:///{(tmp_path / 'ledger.db').resolve()}"

    @pytest.mark.parametrize(
        "url",
        [
            "sqlite:////var/lib/consentsync/ledger.db",
            "sqlite:///:memory:",
            "sqlite://",
            "postgresql+psycopg://app@db:5432/consentsync",
        ],
    )
    def test_other_urls_untouched(self, url: str) -> None:
        assert resolve_sqlite_url(url, Path("/srv/consentsync")) == url


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert default_config_path() == Path("consentsync.yaml")
    monkeypatch.setenv(CONFIG_ENV, "/etc/consentsync/main.yaml")
    assert default_config_path() == Path("/etc/consentsync/main.yaml")
    assert default_config_path("explicit.yaml") == Path("explicit.yaml")


# --- the erasure key --------------------------------------------------------------------------


class TestErasureKey:
    KEY_FILE_CONFIG = MINIMAL + "secrets:\n  erasure_hmac_key_file: keys/erasure.key\n"

    def with_key_file(self, folder: Path, key: str) -> Config:
        """KEY_FILE_CONFIG as a file in ``folder``, its key file (keys/erasure.key) holding ``key``."""
        (folder / "keys").mkdir()
        (folder / "keys" / "erasure.key").write_text(key)
        return parse_config(self.KEY_FILE_CONFIG, folder / "consentsync.yaml")

    def test_from_environment(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv(ERASURE_KEY_ENV, "env-key-0123456789abcdef")
        config = parse_config(self.KEY_FILE_CONFIG, tmp_path / "consentsync.yaml")
        # The environment wins over the file, which need not even exist.
        assert config.erasure_key() == b"env-key-0123456789abcdef"

    def test_from_file_relative_to_config(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        config = self.with_key_file(tmp_path, "file-key-0123456789abcdef\n")
        assert config.erasure_key() == b"file-key-0123456789abcdef"

    def test_from_absolute_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        key_path = tmp_path / "abs.key"
        key_path.write_text("absolute-key-0123456789\n")
        text = MINIMAL + f"secrets:\n  erasure_hmac_key_file: {key_path}\n"
        config = parse_config(text, Path("/elsewhere/consentsync.yaml"))
        assert config.erasure_key() == b"absolute-key-0123456789"

    def test_empty_environment_variable_falls_back_to_file(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv(ERASURE_KEY_ENV, "")
        config = self.with_key_file(tmp_path, "file-key-0123456789abcdef")
        assert config.erasure_key() == b"file-key-0123456789abcdef"

    def test_missing_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        config = parse_config(self.KEY_FILE_CONFIG, tmp_path / "consentsync.yaml")
        with pytest.raises(ConfigError) as raised:
            config.erasure_key()
        message = str(raised.value)
        assert message.startswith(f"{tmp_path / 'consentsync.yaml'}: secrets.erasure_hmac_key_file")
        assert str(tmp_path / "keys" / "erasure.key") in message

    def test_short_key_in_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        config = self.with_key_file(tmp_path, "short\n")
        with pytest.raises(ConfigError, match="at least 16 characters"):
            config.erasure_key()

    def test_no_key_anywhere(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        config = parse_config(MINIMAL, CONFIG)
        with pytest.raises(ConfigError) as raised:
            config.erasure_key()
        assert str(raised.value).startswith(f"{CONFIG}: no erasure key")
        assert ERASURE_KEY_ENV in str(raised.value)

    def test_inline_key_from_env_reference(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        monkeypatch.setenv("MY_ERASURE_SECRET", "inline-secret-0123456789")
        text = MINIMAL + "secrets:\n  erasure_hmac_key: ${MY_ERASURE_SECRET}\n"
        assert parse_config(text, CONFIG).erasure_key() == b"inline-secret-0123456789"


# --- write_starter ----------------------------------------------------------------------------


class TestWriteStarter:
    def test_writes_config_and_private_key(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(ERASURE_KEY_ENV, raising=False)
        path = tmp_path / "new" / "consentsync.yaml"
        key_path = write_starter(path)
        assert key_path == tmp_path / "new" / "consentsync.key"
        assert path.read_text(encoding="utf-8") == starter_config_text()
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        config = load_config(path)
        key = config.erasure_key()
        assert len(key) >= 32
        assert key == key_path.read_text().strip().encode()
        assert config.ledger_url == f"sqlite:///{(tmp_path / 'new' / 'consentsync.db').resolve()}"

    def test_key_is_private_even_with_a_permissive_umask(self, tmp_path: Path) -> None:
        old = os.umask(0)
        try:
            key_path = write_starter(tmp_path / "consentsync.yaml")
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600

    def test_existing_key_is_kept(self, tmp_path: Path) -> None:
        path = tmp_path / "consentsync.yaml"
        key_path = write_starter(path)
        first = key_path.read_text()
        write_starter(path)
        assert key_path.read_text() == first

    def test_each_install_gets_its_own_key(self, tmp_path: Path) -> None:
        one = write_starter(tmp_path / "a" / "consentsync.yaml").read_text()
        two = write_starter(tmp_path / "b" / "consentsync.yaml").read_text()
        assert one != two

    def test_ledger_url_override(self, tmp_path: Path) -> None:
        path = tmp_path / "consentsync.yaml"
        write_starter(path, "postgresql+psycopg://app@db:5432/consentsync")
        config = load_config(path)
        assert config.ledger_url == "postgresql+psycopg://app@db:5432/consentsync"
        assert set(config.purposes) == {"email_marketing", "profiling", "service"}


def test_the_starter_configs_commented_console_settings_parse(tmp_path: Path) -> None:
    """The `web:` example in the starter file, uncommented, is a valid configuration."""
    from consentsync.config import parse_config, starter_config_text

    lines = starter_config_text().splitlines()
    start = lines.index("# web:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("#   "))
    block = [line.removeprefix("# ") for line in lines[start:end]]
    web = parse_config("\n".join([*lines[:start], *block, *lines[end:]]), tmp_path / "c.yaml").settings.web
    assert web.allowed_hosts == ["consent.example.org"]
    assert [str(n) for n in web.trusted_networks()] == ["10.0.0.0/8"]


# --- the hub's public address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://prefs.example.org", "plain HTTP to another machine"),
        ("http://10.0.0.5:8080/prefs", "plain HTTP to another machine"),
        ("prefs.example.org", "is not an address"),
        ("ftp://prefs.example.org", "is not an address"),
    ],
)
def test_the_hubs_public_url_is_https_unless_on_this_machine(url: str, says: str) -> None:
    text = MINIMAL + f"hub:\n  public_url: {url}\n"
    line = text.splitlines().index(f"  public_url: {url}") + 1
    assert_error_at(text, f"{line}: hub.public_url: ", says, "https://HOST")


@pytest.mark.parametrize(
    "url",
    ["https://prefs.example.org/centre", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:80"],
)
def test_the_hubs_public_url_takes_https_and_this_machines_http(url: str) -> None:
    text = MINIMAL + f"hub:\n  public_url: '{url}'\n"
    assert parse_config(text, CONFIG).settings.hub.public_url == url


# --- flags and the hub's languages (black-box findings, session 58) -------------------------------


@pytest.mark.parametrize("value", ["yes", "on", "'1'", "1", "t", "'maybe'", "No"])
@pytest.mark.parametrize("flag", ["direct_marketing", "profiling_for_direct_marketing", "double_opt_in"])
def test_a_flag_takes_true_or_false_only(flag: str, value: str) -> None:
    """YAML 1.1's yes, on and no (and pydantic's lax 1 and t) are not taken for booleans: the
    config is read as YAML 1.2 and a flag is true or false, else a one-line error at its line."""
    text = MINIMAL.replace("    direct_marketing: true\n", f"    {flag}: {value}\n")
    line = text.splitlines().index(f"    {flag}: {value}") + 1
    assert_error_at(text, f"{line}: purposes[0].{flag}: ", "accepted are true or false")


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("True", True)])
def test_a_flag_from_the_environment_reads_true_and_false(
    value: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_DOI", value)
    text = MINIMAL.replace(
        "    direct_marketing: true\n", "    direct_marketing: true\n    double_opt_in: ${NEWSLETTER_DOI}\n"
    )
    purpose = parse_config(text, CONFIG).settings.purposes[0]
    assert purpose.double_opt_in is expected


def test_a_channel_named_no_stays_text() -> None:
    """Norway's language code and any word YAML 1.1 read as false stay what they say."""
    text = MINIMAL.replace("version: 1\n", "version: 1\nchannels: [email, no]\n")
    assert parse_config(text, CONFIG).channels == ("email", "no")


@pytest.mark.parametrize(
    ("languages", "says"),
    [
        ("[fr, en]", "'fr' has no catalogue: accepted are de, en"),
        ("[]", "no language: accepted are one or more of de, en"),
        ("[en, de, en]", "'en' is listed twice"),
        ("[EN]", "'EN' has no catalogue"),
    ],
)
def test_the_hubs_languages_are_those_with_a_catalogue(languages: str, says: str) -> None:
    """A page, mail or receipt says which language it is in: a language without its catalogue
    would be English text claiming to be French (a receipt is the proof of a consent)."""
    text = MINIMAL + f"hub:\n  languages: {languages}\n"
    line = text.splitlines().index(f"  languages: {languages}") + 1
    assert_error_at(text, f"{line}: hub.languages: ", says)


def test_the_hubs_languages_take_the_shipped_catalogues() -> None:
    assert parse_config(MINIMAL + "hub:\n  languages: [de, en]\n", CONFIG).settings.hub.languages == [
        "de",
        "en",
    ]
