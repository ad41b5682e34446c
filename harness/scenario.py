"""Scenario files: the YAML that says which servers to start and what load to drive.

Why pydantic here: a scenario is user input at the edge of the system, and a
benchmark that starts a 25-second server launch before noticing a typo wastes
the user's time. Every field is validated up front with ``extra="forbid"``,
and errors are re-worded to name the file, the field path and the bad value.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from harness.bounds import (
    MAX_SEED,
    FieldProblem,
    check_host_port,
    check_http_url,
    non_finite,
    without_userinfo,
)
from harness.dataset import DatasetError, read_dataset
from harness.placement import PlacementSetting
from harness.scenario_fields import Api, Name, Scalar, Seconds, StrictModel
from harness.scenario_input import ScenarioError, apply_overrides, first_nul, format_error
from harness.slo import Slo
from harness.telemetry.config import TelemetryConfig
from harness.workload import Workload
from harness.yamlfile import brief, read_yaml, shown

if TYPE_CHECKING:
    from harness.protocols.base import TlsOptions

StreamUsage = Literal["auto", "on", "off"]


def _backend_spec(name: str) -> Any:
    """The registered backend spec (imported here, on use: every backend module imports this one)."""
    from harness.backends.registry import get_spec

    return get_spec(name)


class Tls(StrictModel):
    """TLS trust for a server: HTTP when its URL is ``https://``; gRPC whenever this block is given."""

    ca_bundle: Path | None = Field(
        default=None, description="PEM file of CAs to trust instead of the system's"
    )
    server_name: str | None = Field(
        default=None, description="name to verify (and send as SNI) instead of the host"
    )
    insecure_skip_verify: bool = Field(
        default=False, description="do not verify the certificate; flagged in the report"
    )


class Server(StrictModel):
    """One server under test. Settings given as lists are sweep axes."""

    name: Name
    backend: str = Field(description="a registered backend (harness/backends/registry.py)")
    model: str
    served_model_name: str | None = None
    tokenizer: str | None = Field(default=None, description="for client-side token counts; defaults to model")
    python: str | None = Field(default=None, description="interpreter of the backend's own environment")
    base_url: str | None = Field(default=None, description="external: the endpoint's base URL")
    api_key_env: str | None = Field(default=None, description="external: env var that holds the API key")
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list, description="extra CLI args, passed as written")
    settings: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    startup_timeout_s: Seconds = 600.0
    max_model_len: int | None = Field(default=None, gt=0)
    api: Api | list[Api] | None = Field(
        default=None,
        description="the protocol to drive this server with (defaults to workload.api); a list measures "
        "one server launch over each protocol in turn, one cell per protocol",
    )
    grpc_target: str | None = Field(default=None, description="external: host:port of the gRPC endpoint")
    tls: Tls | None = None
    stream_usage: StreamUsage = Field(
        default="auto", description="send OpenAI stream_options: auto (probe once per cell), on or off"
    )
    deploy: dict[str, Any] | None = Field(
        default=None,
        description="where and how the backend deploys the server (kserve: runtime, namespace, "
        "kubeconfig...); judged by the backend's Deploy model",
    )
    gpu: str | None = Field(
        default=None,
        description="the GPU the server runs on, a profile of harness/hardware/data/gpus.yaml (a10g-24gb, "
        "or a unique prefix: a10g); validate then warns when a batch setting cannot fit its KV cache",
    )

    @field_validator("gpu")
    @classmethod
    def _gpu_profile(cls, gpu: str | None) -> str | None:
        from harness.hardware.profiles import resolve_gpu

        return None if gpu is None else resolve_gpu(gpu)

    @field_validator("settings", mode="before")
    @classmethod
    def _finite_settings(cls, settings: Any) -> Any:
        if isinstance(settings, dict):
            for key, value in settings.items():
                for j, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
                    if non_finite(item):
                        path = key if j is None else f"{key}[{j}]"
                        raise FieldProblem(path, item, "must be a finite number")
        return settings

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        problem = check_http_url(url) if url is not None else None
        if problem:
            raise FieldProblem("", without_userinfo(url or ""), problem)
        return url

    @field_validator("grpc_target")
    @classmethod
    def _host_port(cls, target: str | None) -> str | None:
        problem = check_host_port(target) if target is not None else None
        if problem:
            raise ValueError(problem)
        return target

    @field_validator("backend")
    @classmethod
    def _registered(cls, name: str) -> str:
        from harness.backends.registry import UnknownBackendError

        try:
            _backend_spec(name)
        except UnknownBackendError as err:
            raise ValueError(str(err)) from None
        return name

    @model_validator(mode="after")
    def _backend_fields(self) -> Server:
        from harness.backends.registry import all_specs

        endpoint = _backend_spec(self.backend).endpoint
        if endpoint and not self.base_url:
            raise FieldProblem("base_url", None, f"backend '{self.backend}' needs 'base_url'")
        if not endpoint and self.api_key_env:
            names = " or ".join(f"'{s.name}'" for s in all_specs() if s.endpoint)
            raise FieldProblem("api_key_env", self.api_key_env, f"'api_key_env' is only for backend {names}")
        _check_deploy(self)
        for key, value in self.settings.items():
            if isinstance(value, list) and not value:
                raise FieldProblem(f"settings.{key}", value, f"settings.{key} is an empty sweep list")
        if isinstance(self.api, list) and (not self.api or len(set(self.api)) != len(self.api)):
            raise FieldProblem("api", self.api, "a list of protocols must be non-empty and without repeats")
        return self

    def tls_options(self) -> TlsOptions:
        """The ``tls`` block as the transports take it (defaults when absent)."""
        from harness.protocols.base import TlsOptions

        if self.tls is None:
            return TlsOptions()
        bundle = str(self.tls.ca_bundle) if self.tls.ca_bundle is not None else None
        return TlsOptions(bundle, self.tls.server_name, self.tls.insecure_skip_verify)

    def check_tls(self, protocol: str) -> None:
        """gRPC cannot skip certificate verification (grpcio has no such switch): say so up front."""
        from harness.protocols.registry import get_protocol

        if (
            self.tls is not None
            and self.tls.insecure_skip_verify
            and get_protocol(protocol).transport == "grpc"
        ):
            raise ValueError(
                f"server '{self.name}': tls.insecure_skip_verify is not supported for gRPC protocol "
                f"'{protocol}'; give tls.ca_bundle (and tls.server_name) instead"
            )


class Scenario(StrictModel):
    name: Name
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    repeats: int = Field(default=1, ge=1, le=1000)
    servers: list[Server] = Field(min_length=1)
    workload: Workload
    slo: Slo = Field(default_factory=Slo)
    telemetry: TelemetryConfig | None = None  # the cluster's Prometheus, for servers not on this host
    # CPU sets of the launched server and of the load generator (harness/placement.py); not in identities
    placement: PlacementSetting = "none"
    _source: str = PrivateAttr(default="<scenario>")

    @property
    def source(self) -> str:
        """The file this scenario was read from; every later ``ScenarioError`` starts with it."""
        return self._source

    def protocols_of(self, server: Server) -> list[str]:
        """The protocols a server is driven with: its own ``api`` (one or a list), else the workload's."""
        if isinstance(server.api, list):
            return list(server.api)
        return [server.api or self.workload.api]

    @model_validator(mode="after")
    def _unique_and_fits(self) -> Scenario:
        names = [s.name for s in self.servers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FieldProblem("servers", dupes, f"server names must be unique; repeated: {dupes}")
        prompt = self.workload.prompt_tokens
        need = (prompt.upper_bound if prompt else 0) + self.workload.output_tokens.upper_bound
        for i, server in enumerate(self.servers):
            for api in self.protocols_of(server):
                try:
                    _check_served(server, api)
                except ValueError as err:
                    raise FieldProblem(f"servers[{i}].api", api, str(err)) from None
                try:
                    server.check_tls(api)
                except ValueError as err:
                    raise FieldProblem(f"servers[{i}].tls.insecure_skip_verify", True, str(err)) from None
            field = "settings.max_model_len" if "max_model_len" in server.settings else "max_model_len"
            lens = server.settings.get("max_model_len", server.max_model_len)
            for ctx in lens if isinstance(lens, list) else [lens]:
                if isinstance(ctx, int) and need > ctx:
                    raise FieldProblem(
                        f"servers[{i}].{field}",
                        ctx,
                        f"server '{server.name}': longest prompt + output ({need} tokens) "
                        f"exceeds max_model_len {ctx}",
                    )
        return self


def _check_deploy(server: Server) -> None:
    """``deploy`` only for a backend with a ``Deploy`` model, and then valid by it (names the field)."""
    model = _backend_spec(server.backend).Deploy
    if server.deploy is None:
        return
    if model is None:
        raise FieldProblem("deploy", server.deploy, f"backend '{server.backend}' takes no 'deploy' block")
    try:
        model.model_validate(server.deploy)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = (
            "unknown key"
            if first["type"] == "extra_forbidden"
            else first["msg"].removeprefix("Value error, ")
        )
        raise FieldProblem(f"deploy.{loc}" if loc else "deploy", first.get("input"), msg) from None


def _check_served(server: Server, api: str) -> None:
    """A server is driven only with a protocol its backend serves (the spec's ``protocols_for``)."""
    spec = _backend_spec(server.backend)
    if not spec.serves_server(server, api):
        served = ", ".join(spec.protocols_for(server)) or "none"
        raise ValueError(
            f"server '{server.name}': backend '{server.backend}' does not serve api '{api}' "
            f"(it serves: {served})"
        )


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a YAML mapping, got {type(data).__name__}")
    nul = first_nul(data, "")
    if nul is not None:  # a NUL cannot reach a command line, an environment or a file name
        path, value = nul
        raise ScenarioError(
            f"{source}: invalid scenario\n  {brief(path, 200) or '<top>'}: contains a NUL character (got {shown(value)})"
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(format_error(source, err)) from None
    scenario._source = source
    return scenario


def load_scenario(path: Path | str, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    data = read_yaml(path, ScenarioError, "scenario file")
    if overrides:
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: a scenario must be a YAML mapping")
        data = apply_overrides(data, overrides, str(path))
    scenario = parse_scenario(data, str(path))
    for i, server in enumerate(scenario.servers):
        if server.tls is not None and server.tls.ca_bundle is not None:
            bundle = server.tls.ca_bundle
            if not bundle.is_absolute():  # relative to the scenario file, like the dataset
                bundle = server.tls.ca_bundle = (path.parent / bundle).resolve()
            if not bundle.is_file():
                raise ScenarioError(
                    f"{path}: invalid scenario\n  servers[{i}].tls.ca_bundle: no such file (got {shown(str(bundle))})"
                )
    dataset = scenario.workload.dataset
    if dataset is not None:
        if not dataset.is_absolute():  # relative to the scenario file, so scenarios travel with their data
            dataset = (path.parent / dataset).resolve()
            scenario.workload.dataset = dataset
        if not dataset.is_file():
            raise ScenarioError(
                f"{path}: invalid scenario\n  workload.dataset: no such file (got {shown(str(dataset))})"
            )
        try:  # every line, now: a bad line must not surface after the server started
            read_dataset(dataset)
        except DatasetError as err:
            raise ScenarioError(f"{path}: invalid scenario\n  workload.dataset: {err}") from None
    return scenario
