"""The run's Redactor: which values it knows, and what its text/data/command/env/scenario forms hide."""

from __future__ import annotations

import base64

import pytest
import yaml

from harness.backends.base import ServerHandle
from harness.backends.registry import without_url_credentials
from harness.load.httphead import request_prefix
from harness.records import RequestRecord, scrub_record
from harness.redact import REDACTED
from harness.runsecrets import SECRETS_ENV, Redactor, basic_auth, split_userinfo
from harness.scenario import parse_scenario

WORKLOAD = {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 2}


def _scenario(**server: object) -> object:
    base = {"name": "s", "backend": "sim", "model": "m"}
    return parse_scenario({"name": "x", "servers": [{**base, **server}], "workload": WORKLOAD})


def test_split_userinfo_decodes_and_keeps_the_rest_of_the_url() -> None:
    assert split_userinfo("http://u%40x:p%3Ass@h:8/v1?q=1") == ("http://h:8/v1?q=1", "u@x:p:ss")
    assert split_userinfo("https://tok@h") == ("https://h", "tok")
    assert split_userinfo("http://h:1/v1") == ("http://h:1/v1", None)


@pytest.mark.parametrize(
    ("server", "secret"),
    [
        ({"env": {"HF_TOKEN": "plain-env-value-1"}}, "plain-env-value-1"),
        ({"env": {"EXTRA": "Bearer tok-in-env-22"}}, "tok-in-env-22"),
        ({"args": ["--api-key", "arg-value-333"]}, "arg-value-333"),
        ({"args": ["--hf-token=arg-eq-value-4"]}, "arg-eq-value-4"),
        ({"args": ["--middleware", "Bearer mid-value-55"]}, "mid-value-55"),
        ({"args": ["--x", "hf_abcdefghijk"]}, "hf_abcdefghijk"),
    ],
)
def test_for_scenario_knows_env_and_arg_secrets(server: dict, secret: str) -> None:
    redactor = Redactor.for_scenario(_scenario(**server), environ={})
    assert secret in redactor.known
    assert secret not in redactor.text(f"a line with {secret} in it")


def test_for_scenario_knows_the_api_key_and_url_userinfo() -> None:
    sc = parse_scenario(
        {
            "name": "x",
            "servers": [
                {
                    "name": "a",
                    "backend": "external",
                    "model": "m",
                    "base_url": "http://h:1",
                    "api_key_env": "K",
                },
                {"name": "b", "backend": "external", "model": "m", "base_url": "http://usr:pw-value-9@h:1"},
            ],
            "workload": WORKLOAD,
        }
    )
    redactor = Redactor.for_scenario(sc, environ={"K": "the-api-key-77"})
    encoded = base64.b64encode(b"usr:pw-value-9").decode()
    assert {"the-api-key-77", "pw-value-9", "usr:pw-value-9", encoded} <= redactor.known
    assert "usr" not in redactor.known  # a user name is not a secret


def test_for_inputs_knows_secret_set_values_and_secret_environment_variables() -> None:
    redactor = Redactor.for_inputs(
        [
            "servers.0.env.HF_TOKEN=set-secret-1",
            "workload.requests=4",
            "servers.0.args=[--middleware, 'Bearer bt-in-set']",
        ],
        environ={"GITHUB_TOKEN": "ghp_exported_value", "SOME_KEY": "false", "HOME": "/root/home"},
    )
    assert {"set-secret-1", "bt-in-set", "ghp_exported_value"} <= redactor.known
    assert not {"4", "false", "/root/home"} & redactor.known  # switches and ordinary values stay


def test_add_unpacks_bearer_and_basic_header_values() -> None:
    redactor = Redactor()
    redactor.add_headers({"Authorization": basic_auth("me:basic-pw-1"), "X-Api": "Bearer bearer-tok-2"})
    assert {"basic-pw-1", "me:basic-pw-1", "bearer-tok-2"} <= redactor.known
    assert redactor.text("me:basic-pw-1 / bearer-tok-2") == f"{REDACTED} / {REDACTED}"


def test_command_env_and_data_forms() -> None:
    redactor = Redactor(["known-value-1"])
    assert redactor.command(["serve", "--api-key", "x1", "--note", "has known-value-1"]) == [
        "serve", "--api-key", REDACTED, "--note", f"has {REDACTED}",
    ]  # fmt: skip
    assert redactor.env({"HF_TOKEN": "t", "PATH": "/bin:known-value-1"}) == {
        "HF_TOKEN": REDACTED,
        "PATH": f"/bin:{REDACTED}",
    }
    assert redactor.data({"a": ["known-value-1", 3]}) == {"a": [REDACTED, 3]}


def test_known_values_travel_to_locust_through_the_environment_only() -> None:
    redactor = Redactor(["v-one-1", "v-two-2"])
    again = Redactor.from_environ({SECRETS_ENV: redactor.to_environ()})
    assert again.known == redactor.known
    assert Redactor.from_environ({SECRETS_ENV: "not json"}).known == frozenset()
    assert Redactor.from_environ({}).known == frozenset()


def test_scenario_copy_is_redacted_by_name_by_value_and_in_the_url() -> None:
    sc = _scenario(
        env={"HF_TOKEN": "env-secret-1", "OTHER": "uses env-secret-1"},
        args=["--api-key", "arg-secret-2", "--middleware", "Bearer mw-secret-3", "--max-num-seqs", "4"],
    )
    text = Redactor.for_scenario(sc, environ={}).scenario_yaml(sc)
    for secret in ("env-secret-1", "arg-secret-2", "mw-secret-3"):
        assert secret not in text
    data = yaml.safe_load(text)
    assert data["servers"][0]["env"] == {"HF_TOKEN": REDACTED, "OTHER": f"uses {REDACTED}"}
    assert data["servers"][0]["args"] == [
        "--api-key",
        REDACTED,
        "--middleware",
        f"Bearer {REDACTED}",
        "--max-num-seqs",
        "4",
    ]
    ext = parse_scenario(
        {"name": "x", "servers": [{"name": "e", "backend": "external", "model": "m",
                                   "base_url": "http://u:url-secret-4@h:9/v1"}], "workload": WORKLOAD}
    )  # fmt: skip
    stored = yaml.safe_load(Redactor.for_scenario(ext, environ={}).scenario_yaml(ext))
    assert stored["servers"][0]["base_url"] == f"http://{REDACTED}@h:9/v1"


def test_a_record_message_cut_inside_a_key_loses_the_start_of_the_key() -> None:
    key = "cut-secret-0123456789"
    redactor = Redactor([key])
    rec = RequestRecord("r", "c", "s", 1, 0, "completions", 0, 0, 0)
    rec.error_message = 'HTTP 401: {"auth": "Bearer cut-secret-0123'
    rec.retry_after = f"later {key}"
    scrub_record(rec, redactor.message)
    assert "cut-secret" not in rec.error_message and rec.retry_after == f"later {REDACTED}"
    # ...but names are not cut: a name ending with the start of a key is left alone.
    assert redactor.text("cell-cut-secret") == "cell-cut-secret"


def test_userinfo_never_reaches_the_host_header_or_the_handle_url() -> None:
    head = request_prefix("http://u:pw-secret@127.0.0.1:8000/p", "/v1/completions", {}).decode()
    assert "Host: 127.0.0.1:8000\r\n" in head and "pw-secret" not in head
    handle = ServerHandle("http://u:pw-secret@h:1", "m", [], {}, None, None, None, None, None)
    without_url_credentials(handle)
    assert handle.base_url == "http://h:1" and handle.headers == {"Authorization": basic_auth("u:pw-secret")}
    explicit = ServerHandle(
        "http://u:pw@h:1", "m", [], {}, None, None, None, None, None, {"authorization": "Bearer b"}
    )
    without_url_credentials(explicit)
    assert explicit.base_url == "http://h:1" and explicit.headers == {"authorization": "Bearer b"}


def test_external_backend_sends_userinfo_as_basic_unless_an_api_key_is_configured(monkeypatch) -> None:
    from harness.backends.external import auth_headers

    def server(**extra: object) -> object:
        base = {"name": "e", "backend": "external", "model": "m", "base_url": "http://u:pw-x1@h:1"}
        return parse_scenario({"name": "x", "servers": [{**base, **extra}], "workload": WORKLOAD}).servers[0]

    assert auth_headers(server()) == {"Authorization": basic_auth("u:pw-x1")}
    monkeypatch.setenv("TB_TEST_KEY_PRECEDENCE", "bearer-key-1")
    assert auth_headers(server(api_key_env="TB_TEST_KEY_PRECEDENCE")) == {
        "Authorization": "Bearer bearer-key-1"
    }


def test_a_load_plan_holding_a_known_secret_is_refused_not_written(tmp_path) -> None:
    from harness.load.runner import LoadRunError, write_plan
    from load_plans import sim_plan

    plan = sim_plan(tmp_path, base_url="http://127.0.0.1:9/plan-secret-99", requests=4)
    with pytest.raises(LoadRunError, match="would hold a secret in base_url") as err:
        write_plan(tmp_path / "load_plan.json", plan, Redactor(["plan-secret-99"]))
    assert "plan-secret-99" not in str(err.value) and not (tmp_path / "load_plan.json").exists()
    write_plan(tmp_path / "load_plan.json", plan, Redactor(["other-secret"]))
    assert (tmp_path / "load_plan.json").exists()
