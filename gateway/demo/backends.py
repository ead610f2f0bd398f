"""Start the demo provincial back-ends on loopback ports and hand back their addresses and secrets.

``start_demo_backends`` runs real aiohttp servers (two social-insurance SOAP deployments
sharing one WSDL, the Shaanxi housing-fund, degree and e-driving-licence REST systems, the
Qinghai and Gansu government-service platforms, the Jiangsu contribution-proof system, Qinghai's
public credit information platform) on free ports. ``DemoSecrets`` holds the credentials they
expect; ``DemoSecrets.env()`` is the environment ``config/systems.yaml`` reads them from. The
identifiers below (usernames, key id, client id) are not secret and must match
``config/systems.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from secrets import token_bytes, token_urlsafe
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from gateway.demo.case_office import (
    CaseOfficeState,
    build_case_office_app,
    gansu_office,
    qinghai_office,
)
from gateway.demo.contribution_proof import ContributionProofState, build_contribution_proof_app
from gateway.demo.credit import CreditState, build_credit_app
from gateway.demo.degree import DegreeState, build_degree_app
from gateway.demo.driving_licence import DrivingLicenceState, build_driving_licence_app
from gateway.demo.housing_fund import HousingFundState, build_housing_fund_app
from gateway.demo.licence_system import (
    LicenceSystemState,
    build_licence_system_app,
    qinghai_licence_system,
    shaanxi_licence_system,
)
from gateway.demo.property_transfer import (
    AgencyState,
    CivilState,
    build_agency_app,
    build_civil_app,
    xining_housing,
    xining_registry,
    xining_tax,
    xining_utilities,
)
from gateway.demo.recording import Recorder
from gateway.demo.social_insurance import (
    ENDPOINT_PATH,
    SocialInsuranceState,
    build_social_insurance_app,
    qinghai_insured,
    shaanxi_insured,
)
from gateway.demo.subject_check import demo_province_keys
from gateway.packaged import DEMO_CONFIG_DIR

DEFAULT_CONFIG_DIR = DEMO_CONFIG_DIR
SI_WSDL = "wsdl/social-insurance.wsdl"

# System ids in config/systems.yaml.
QINGHAI_SI = "qinghai-si"
SHAANXI_SI = "shaanxi-si"
SHAANXI_HOUSING = "shaanxi-housing"
SHAANXI_DEGREE = "shaanxi-degree"
SHAANXI_DRIVING = "shaanxi-driving"
# Government-service platforms taking applications as cases (S3 多地联办, S10 异地代收代办).
QINGHAI_GOV = "qinghai-gov"
GANSU_GOV = "gansu-gov"
# Jiangsu's e-sealed contribution proofs (S9, checked by Qinghai's housing-security office).
JIANGSU_PROOF = "jiangsu-proof"
# S13 二手房转移登记及水电气联动过户: Xining's agencies and Shaanxi's civil registers.
XINING_HOUSING = "xining-housing"
XINING_TAX = "xining-tax"
XINING_REGISTRY = "xining-registry"
XINING_UTILITIES = "xining-utilities"
SHAANXI_CIVIL = "shaanxi-civil"
# S14: Qinghai's public credit information platform.
QINGHAI_CREDIT = "qinghai-credit"
# E-licence systems (电子证照): they issue, seal and verify licences (谁制发谁核验).
SHAANXI_LICENCE = "shaanxi-licence"
QINGHAI_LICENCE = "qinghai-licence"
SYSTEM_IDS = (
    QINGHAI_SI,
    SHAANXI_SI,
    SHAANXI_HOUSING,
    SHAANXI_DEGREE,
    SHAANXI_DRIVING,
    QINGHAI_GOV,
    GANSU_GOV,
    JIANGSU_PROOF,
    XINING_HOUSING,
    XINING_TAX,
    XINING_REGISTRY,
    XINING_UTILITIES,
    SHAANXI_CIVIL,
    QINGHAI_CREDIT,
    SHAANXI_LICENCE,
    QINGHAI_LICENCE,
)

# Ports of the placeholder addresses in config/systems.yaml (for running the back-ends on fixed
# ports, e.g. in docker compose); start_demo_backends picks free ports unless told otherwise.
DEFAULT_PORTS: Mapping[str, int] = {
    QINGHAI_SI: 18063,
    SHAANXI_SI: 18061,
    SHAANXI_HOUSING: 18161,
    SHAANXI_DEGREE: 18261,
    SHAANXI_DRIVING: 18361,
    QINGHAI_GOV: 18463,
    GANSU_GOV: 18462,
    JIANGSU_PROOF: 18532,
    XINING_HOUSING: 18663,
    XINING_TAX: 18664,
    XINING_REGISTRY: 18665,
    XINING_UTILITIES: 18666,
    SHAANXI_CIVIL: 18667,
    QINGHAI_CREDIT: 18763,
    SHAANXI_LICENCE: 18761,
    QINGHAI_LICENCE: 18764,
}

# Non-secret identifiers the gateway presents; they must match config/systems.yaml.
QINGHAI_SI_USERNAME = "tongban-gw-qh"
SHAANXI_SI_USERNAME = "tongban-gw-sx"
DEGREE_KEY_ID = "tongban-gw-2025"
DRIVING_CLIENT_ID = "tongban-gateway"
TOKEN_PATH = "/oauth/token"

# Environment variable per secret, as config/systems.yaml refers to them.
ENV_NAMES: Mapping[str, str] = {
    "qinghai_si_password": "TONGBAN_SECRET_QH_SI_PASSWORD",
    "shaanxi_si_password": "TONGBAN_SECRET_SX_SI_PASSWORD",
    "housing_api_key": "TONGBAN_SECRET_SX_HOUSING_API_KEY",
    "degree_hmac_secret": "TONGBAN_SECRET_SX_DEGREE_HMAC_SECRET",
    "driving_client_secret": "TONGBAN_SECRET_SX_DRIVING_CLIENT_SECRET",
    "qinghai_gov_api_key": "TONGBAN_SECRET_QH_GOV_API_KEY",
    "gansu_gov_api_key": "TONGBAN_SECRET_GS_GOV_API_KEY",
    "jiangsu_proof_api_key": "TONGBAN_SECRET_JS_PROOF_API_KEY",
    "xining_property_api_key": "TONGBAN_SECRET_XN_PROPERTY_API_KEY",
    "shaanxi_civil_api_key": "TONGBAN_SECRET_SX_CIVIL_API_KEY",
    "qinghai_credit_api_key": "TONGBAN_SECRET_QH_CREDIT_API_KEY",
    "shaanxi_licence_api_key": "TONGBAN_SECRET_SX_LICENCE_API_KEY",
    "qinghai_licence_api_key": "TONGBAN_SECRET_QH_LICENCE_API_KEY",
    "shaanxi_licence_notice_key": "TONGBAN_SECRET_SX_LICENCE_NOTICE_KEY",
}


@dataclass(frozen=True, slots=True, repr=False)
class DemoSecrets:
    """The credentials the demo back-ends expect from the gateway; never shown in a repr."""

    qinghai_si_password: str
    shaanxi_si_password: str
    housing_api_key: str
    degree_hmac_secret: str
    driving_client_secret: str
    qinghai_gov_api_key: str
    gansu_gov_api_key: str
    jiangsu_proof_api_key: str
    xining_property_api_key: str
    shaanxi_civil_api_key: str
    qinghai_credit_api_key: str
    shaanxi_licence_api_key: str
    qinghai_licence_api_key: str
    shaanxi_licence_notice_key: str

    @classmethod
    def generate(cls) -> DemoSecrets:
        """Fresh random secrets, one per back-end."""
        return cls(**{f.name: token_urlsafe(24) for f in fields(cls)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DemoSecrets:
        """Read them back from an environment made by ``env()`` (KeyError names a missing one)."""
        return cls(**{name: environ[var] for name, var in ENV_NAMES.items()})

    def env(self) -> dict[str, str]:
        """Environment variable → value, exactly the names config/systems.yaml refers to."""
        return {var: getattr(self, name) for name, var in ENV_NAMES.items()}

    def __repr__(self) -> str:
        return "DemoSecrets(**********)"


@dataclass(frozen=True, slots=True)
class RunningBackend:
    """One back-end server: where it listens, what the gateway should call, what it received."""

    system_id: str
    base_url: str
    address: str
    recorder: Recorder
    runner: web.AppRunner


@dataclass(frozen=True, slots=True)
class DemoBackends:
    """The running demo back-ends; ``addresses`` / ``overrides()`` point the config at them."""

    qinghai_si: SocialInsuranceState
    shaanxi_si: SocialInsuranceState
    housing: HousingFundState
    degree: DegreeState
    driving: DrivingLicenceState
    running: Mapping[str, RunningBackend]
    offices: Mapping[str, CaseOfficeState] = field(default_factory=dict)
    """system id → the government-service platforms' state (S3, S10)."""
    proof: ContributionProofState | None = None
    """Jiangsu's contribution-proof system (S9)."""
    agencies: Mapping[str, AgencyState] = field(default_factory=dict)
    """system id → Xining's agencies of S13 (filing, tax, registry, utilities)."""
    civil: CivilState | None = None
    """Shaanxi's household and marriage registers (S13's buyer check)."""
    credit: CreditState | None = None
    """Qinghai's public credit information platform (S14)."""
    licence_systems: Mapping[str, LicenceSystemState] = field(default_factory=dict)
    """system id → the e-licence systems of Shaanxi and Qinghai (S12, S8's parent licence)."""

    @property
    def addresses(self) -> dict[str, str]:
        """system id → the ``address`` to put in systems.yaml (SOAP endpoint or REST base URL)."""
        return {sid: backend.address for sid, backend in self.running.items()}

    def overrides(self) -> dict[str, dict[str, Any]]:
        """system id → the systems.yaml fields to replace: ``address``, and the OAuth2 token URL
        of the driving-licence system, which is served by the back-end itself."""
        out: dict[str, dict[str, Any]] = {sid: {"address": a} for sid, a in self.addresses.items()}
        out[SHAANXI_DRIVING]["auth"] = {"token_url": self.token_url}
        return out

    @property
    def token_url(self) -> str:
        return self.running[SHAANXI_DRIVING].base_url + TOKEN_PATH

    def wsdl_url(self, system_id: str) -> str:
        return self.running[system_id].address + "?wsdl"

    def recorder(self, system_id: str) -> Recorder:
        """What a back-end received (count, context, idempotency keys) and its injected trouble."""
        return self.running[system_id].recorder

    async def aclose(self) -> None:
        for backend in self.running.values():
            await backend.runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    # No access log: request paths carry account numbers.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}"


async def start_demo_backends(
    secrets: DemoSecrets,
    host: str = "127.0.0.1",
    *,
    ports: Mapping[str, int] | None = None,
    config_dir: Path | None = None,
) -> DemoBackends:
    """Start every demo back-end (port 0 = a free one unless ``ports`` names one per system id)
    and return them running; ``await backends.aclose()`` (or ``async with``) stops them."""
    config_dir = config_dir or DEFAULT_CONFIG_DIR
    wsdl = await asyncio.to_thread((config_dir / SI_WSDL).read_bytes)
    # Each province's subject key, as the agreement hands it out (subject_check.py).
    subject_keys = demo_province_keys(["32", "61", "62", "63"])
    qinghai_si = SocialInsuranceState(
        province="63",
        centre_name="青海省示范社会保险事业服务局",
        username=QINGHAI_SI_USERNAME,
        password=secrets.qinghai_si_password,
        seal_key=secrets.qinghai_si_password.encode() + b"/seal",
        insured=qinghai_insured(),
    )
    shaanxi_si = SocialInsuranceState(
        province="61",
        centre_name="陕西省示范社会保险经办中心",
        username=SHAANXI_SI_USERNAME,
        password=secrets.shaanxi_si_password,
        seal_key=secrets.shaanxi_si_password.encode() + b"/seal",
        insured=shaanxi_insured(),
    )
    housing = HousingFundState(api_key=secrets.housing_api_key, subject_key=subject_keys.get("61"))
    degree = DegreeState(key_id=DEGREE_KEY_ID, secret=secrets.degree_hmac_secret)
    driving = DrivingLicenceState(
        client_id=DRIVING_CLIENT_ID, client_secret=secrets.driving_client_secret
    )
    # Jiangsu's seal key, fresh per process and never given to the gateway; Qinghai checks proof
    # seals with it (standing in for Jiangsu's seal certificate: an SM2 seal needs only that).
    proof = ContributionProofState(
        api_key=secrets.jiangsu_proof_api_key,
        seal_key=token_bytes(32),
        subject_key=subject_keys.get("32"),
    )
    offices = {
        QINGHAI_GOV: qinghai_office(secrets.qinghai_gov_api_key, {"32": proof.seal_key}),
        GANSU_GOV: gansu_office(secrets.gansu_gov_api_key),
    }
    xining_key = secrets.xining_property_api_key
    agencies = {
        XINING_HOUSING: xining_housing(xining_key),
        XINING_TAX: xining_tax(xining_key),
        XINING_REGISTRY: xining_registry(xining_key),
        XINING_UTILITIES: xining_utilities(xining_key),
    }
    civil = CivilState(api_key=secrets.shaanxi_civil_api_key)
    credit = CreditState(api_key=secrets.qinghai_credit_api_key)
    licence_systems = {
        SHAANXI_LICENCE: shaanxi_licence_system(secrets.shaanxi_licence_api_key),
        QINGHAI_LICENCE: qinghai_licence_system(secrets.qinghai_licence_api_key),
    }
    plan: list[tuple[str, web.Application, Recorder, str]] = [
        (
            QINGHAI_SI,
            build_social_insurance_app(qinghai_si, wsdl),
            qinghai_si.recorder,
            ENDPOINT_PATH,
        ),
        (
            SHAANXI_SI,
            build_social_insurance_app(shaanxi_si, wsdl),
            shaanxi_si.recorder,
            ENDPOINT_PATH,
        ),
        (SHAANXI_HOUSING, build_housing_fund_app(housing), housing.recorder, ""),
        (SHAANXI_DEGREE, build_degree_app(degree), degree.recorder, ""),
        (SHAANXI_DRIVING, build_driving_licence_app(driving), driving.recorder, ""),
        *(
            (sid, build_case_office_app(office), office.recorder, "")
            for sid, office in offices.items()
        ),
        (JIANGSU_PROOF, build_contribution_proof_app(proof), proof.recorder, ""),
        *((sid, build_agency_app(agency), agency.recorder, "") for sid, agency in agencies.items()),
        (SHAANXI_CIVIL, build_civil_app(civil), civil.recorder, ""),
        (QINGHAI_CREDIT, build_credit_app(credit), credit.recorder, ""),
        *(
            (sid, build_licence_system_app(system), system.recorder, "")
            for sid, system in licence_systems.items()
        ),
    ]
    running: dict[str, RunningBackend] = {}
    try:
        for system_id, app, recorder, path in plan:
            port = (ports or {}).get(system_id, 0)
            runner, base_url = await _serve(app, host, port)
            running[system_id] = RunningBackend(
                system_id, base_url, base_url + path, recorder, runner
            )
    except BaseException:
        for backend in running.values():
            await backend.runner.cleanup()
        raise
    return DemoBackends(
        qinghai_si,
        shaanxi_si,
        housing,
        degree,
        driving,
        running,
        offices,
        proof,
        agencies,
        civil,
        credit,
        licence_systems,
    )


async def _serve_until_cancelled(host: str, config_dir: Path) -> None:
    demo_secrets = DemoSecrets.from_env(os.environ)
    async with await start_demo_backends(
        demo_secrets, host, ports=DEFAULT_PORTS, config_dir=config_dir
    ) as backends:
        for system_id, address in sorted(backends.addresses.items()):
            print(f"{system_id:<16} {address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.demo.backends``: the back-ends alone, on the fixed ``DEFAULT_PORTS``
    of config/systems.yaml, with secrets from the environment (e.g. a docker compose service)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR, help="config dir")
    args = parser.parse_args(argv)
    asyncio.run(_serve_until_cancelled(args.host, args.config))


if __name__ == "__main__":
    main()
