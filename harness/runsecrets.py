"""Every secret one run knows, and the one object that scrubs them from whatever the run writes.

Why by value, per run: a name-based rule (``--api-key X``, ``HF_TOKEN=...``)
covers the places a secret is *configured*, not the places it *travels to*. A
server echoes the Authorization header into a 401 body or an SSE event, which
becomes a record's ``error_message``; vLLM logs its own arguments into
``server.log``; a readiness error quotes a response. None of those carry a
name. So the harness collects, before anything starts, the value of every
secret it will hand out (API keys, tokens, URL passwords, secret-named
``--set`` values, later the headers a backend hands back) and every writer
(run-folder files, logs, records, terminal lines, error messages) passes its
text through :class:`Redactor`. Shapes (``Bearer ...``, ``hf_...``, ``sk-...``,
URL userinfo) are scrubbed too, for secrets the harness never saw.

The Locust processes build records themselves; they get the known values in
``TOKENBENCH_LOAD_SECRETS`` (environment only, like the auth headers: never a
file or an argv).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from harness.redact import (
    MIN_SECRET_CHARS,
    REDACTED,
    is_secret_name,
    redact_command,
    redact_mapping,
    scrub,
    scrub_text,
    secret_values_in_args,
)

if TYPE_CHECKING:
    from harness.scenario import Scenario

SECRETS_ENV = "TOKENBENCH_LOAD_SECRETS"
# The shared token distributed load workers present to the master (docs/distributed.md).
WORKER_TOKEN_ENV = "TOKENBENCH_WORKER_TOKEN"
# A secret-named variable of the harness's own environment counts from this length on: shorter
# values ("1", "false") are switches, and scrubbing them would deface ordinary log lines.
MIN_ENVIRON_SECRET_CHARS = 8
_TOKEN_IN_TEXT = re.compile(
    r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9._~+/=-]{4,})|\b(hf_[A-Za-z0-9]{8,})|\b(sk-[A-Za-z0-9_-]{8,})"
)


def split_userinfo(url: str) -> tuple[str, str | None]:
    """``http://u:p@h:1/x`` → (``http://h:1/x``, ``"u:p"`` percent-decoded); (url, None) without userinfo."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    decoded = unquote(user) + (sep + unquote(password) if sep else "")
    return parts._replace(netloc=hostport).geturl(), decoded


def basic_auth(userinfo: str) -> str:
    """The ``Authorization`` value for a URL's ``user:password`` (RFC 7617)."""
    return "Basic " + base64.b64encode(userinfo.encode("utf-8")).decode("ascii")


def userinfo_secrets(userinfo: str) -> set[str]:
    """What of a URL's userinfo is secret: the password (or a lone token), the pair, and its Basic form.

    A user name next to a password is not a secret (and scrubbing "admin" from every log line
    would do more harm than good); a userinfo without a colon is a token (``https://TOKEN@host``).
    """
    user, sep, password = userinfo.partition(":")
    found = {userinfo, basic_auth(userinfo).split(" ", 1)[1]}
    found.add(password if sep else user)
    return found


def tokens_in(text: str) -> set[str]:
    """Secret-shaped tokens inside a value (``'Bearer X'`` → X), so a flag of any name gives them up."""
    return {next(g for g in m.groups() if g) for m in _TOKEN_IN_TEXT.finditer(text)}


class Redactor:
    """The known secret values of one run; :meth:`text`, :meth:`data`, :meth:`command`, :meth:`env`
    return copies with them (and every secret-shaped token) replaced by ``REDACTED``.

    One per run, owned by whoever runs it (no module state). :meth:`add` takes more values as
    they appear (a cluster backend's bearer token in ``ServerHandle.headers``).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._known: set[str] = set()
        self.add(*values)

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)

    def add(self, *values: str) -> None:
        """Remember secret values; for ``Bearer X``/``Basic X`` the token too, and Basic's decoded pair."""
        for value in values:
            value = str(value).strip()
            if len(value) < MIN_SECRET_CHARS or value == REDACTED:
                continue
            self._known.add(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic"):
                self._known.add(token.strip())
                if scheme.lower() == "basic":
                    self._add_basic(token.strip())
            self._known |= {t for t in tokens_in(value) if len(t) >= MIN_SECRET_CHARS}

    def _add_basic(self, token: str) -> None:
        try:
            pair = base64.b64decode(token, validate=True).decode("utf-8")
        except ValueError:
            return
        if ":" in pair:
            self._known |= {s for s in userinfo_secrets(pair) if len(s) >= MIN_SECRET_CHARS}

    def add_headers(self, headers: Mapping[str, str]) -> None:
        """Every header value a backend hands back is auth (that is what ``ServerHandle.headers`` is for)."""
        self.add(*headers.values())

    def add_args(self, argv: Iterable[str]) -> None:
        argv = [str(a) for a in argv]
        self.add(*secret_values_in_args(argv))
        for arg in argv:
            self.add(*tokens_in(arg))

    def add_url(self, url: str | None) -> None:
        if url:
            _, userinfo = split_userinfo(url)
            if userinfo is not None:
                self.add(*userinfo_secrets(userinfo))

    # -- scrubbing ------------------------------------------------------------------------------
    def text(self, text: str) -> str:
        return scrub_text(text, self.known)

    def message(self, text: str) -> str:
        """:meth:`text` for a message that may have been cut at a length bound (a record's error
        body): the start of a known value left at its end goes too."""
        return scrub_text(text, self.known, cut=True)

    def data(self, data: Any) -> Any:
        """Nested dicts/lists with every string (keys too) scrubbed."""
        return scrub(data, self.known)

    def command(self, argv: Iterable[str]) -> list[str]:
        """A command as it may be shown: secret-named flags' values hidden, then scrubbed by value."""
        return [self.text(a) for a in redact_command([str(a) for a in argv])]

    def env(self, env: Mapping[str, Any]) -> dict[str, Any]:
        """Environment variables as they may be shown: secret-named ones hidden, the rest scrubbed."""
        return self.data(redact_mapping(env))

    # -- the Locust processes ---------------------------------------------------------------------
    def to_environ(self) -> str:
        return json.dumps(sorted(self._known))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        """The values the harness passed in ``TOKENBENCH_LOAD_SECRETS`` (none: shapes only)."""
        raw = (os.environ if environ is None else environ).get(SECRETS_ENV)
        try:
            values = json.loads(raw) if raw else []
        except json.JSONDecodeError:
            values = []  # never echo the variable: it holds secrets
        return cls(v for v in values if isinstance(v, str)) if isinstance(values, list) else cls()

    # -- one scenario -----------------------------------------------------------------------------
    @classmethod
    def for_scenario(
        cls,
        scenario: Scenario,
        overrides: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> Redactor:
        """Every secret a run of ``scenario`` will know before any server starts.

        * each server's ``api_key_env`` value, its secret-named ``env`` values and every
          token-shaped value in ``env``, secret values in ``args`` (``--api-key X``, and the
          token in ``--middleware 'Bearer X'``), and the userinfo of ``base_url``;
        * and what :meth:`for_inputs` finds.
        """
        environ = os.environ if environ is None else environ
        found = cls.for_inputs(overrides, environ)
        for server in scenario.servers:
            if server.api_key_env and environ.get(server.api_key_env):
                found.add(environ[server.api_key_env])
            for key, value in server.env.items():
                found.add(*([value] if is_secret_name(key) else tokens_in(value)))
            found.add_args(server.args)
            found.add_url(server.base_url)
        return found

    @classmethod
    def for_inputs(cls, overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> Redactor:
        """The secrets known before the scenario is read (so its errors are scrubbed too).

        * the value of each ``--set`` whose path names a secret (``servers.0.env.HF_TOKEN=...``)
          and any token-shaped ``--set`` value;
        * secret-named variables of the harness's environment (``HF_TOKEN`` exported in the
          shell reaches every server it starts), from ``MIN_ENVIRON_SECRET_CHARS`` on.
        """
        environ = os.environ if environ is None else environ
        found = cls()
        for item in overrides:
            path, sep, value = item.partition("=")
            found.add(*tokens_in(value))
            if sep and any(is_secret_name(part) for part in path.split(".")):
                found.add(value.strip().strip("'\""))
        found.add(
            *(
                v
                for k, v in environ.items()
                if is_secret_name(k) and len(v) >= MIN_ENVIRON_SECRET_CHARS and k != SECRETS_ENV
            )
        )
        return found

    def scenario_yaml(self, scenario: Scenario) -> str:
        """:meth:`scenario_data` as YAML text."""
        import yaml

        return yaml.safe_dump(self.scenario_data(scenario), sort_keys=False)

    def scenario_data(self, scenario: Scenario) -> dict[str, Any]:
        """The scenario as it may be stored (the run folder's ``scenario.yaml``).

        Secret-named ``env`` values, secret flags' values in ``args`` and ``base_url``
        userinfo become ``REDACTED`` (``http://REDACTED@host``), then every string is scrubbed
        by value. ``tokenbench run --resume`` asks for what is marked (``harness.resume``).
        """
        data = scenario.model_dump(mode="json", exclude_none=True)
        for server in data.get("servers", []):
            if server.get("env"):
                server["env"] = redact_mapping(server["env"])
            if server.get("args"):
                server["args"] = redact_command(server["args"])
            if server.get("base_url"):
                clean, userinfo = split_userinfo(server["base_url"])
                if userinfo is not None:
                    scheme, _, rest = clean.partition("://")
                    server["base_url"] = f"{scheme}://{REDACTED}@{rest}"
        return self.data(data)
