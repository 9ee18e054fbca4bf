"""Settings: a TOML file (DUNNING_CONFIG, default ./dunning.toml if present) under
DUNNING_* environment variables. Validated at boot; a bad value stops the program with a
message naming the key, the value and the rule it broke.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dunning.consequences import first_match
from dunning.contracts import DECLINE_CLASSES, CampaignPlan, ConsequenceRule, RetryPolicy, StepSpec
from dunning.email_settings import EmailSettings
from dunning.recompute_settings import RecomputeSettings
from dunning.rollout import RolloutSettings

BUILTIN_TEMPLATES = Path(__file__).parent / "email" / "templates"
ATTENTION_MESSAGE = (
    "Action Required: We were unable to process your recent payment. "
    "Please update your payment method to avoid service interruption."
)
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ConfigError(Exception):
    """A configuration value broke a rule. The message names key, value and rule."""


def default_steps() -> list[StepSpec]:
    return [
        StepSpec(after_days=0, key="first_notice", template="first_notice"),
        StepSpec(after_days=5, key="reminder", template="reminder"),
        StepSpec(after_days=12, key="final_notice", template="final_notice"),
    ]


def default_retry_policies() -> dict[str, RetryPolicy]:
    return {
        "soft": RetryPolicy(days=[1, 3, 5, 7]),
        "hard": RetryPolicy(days=[], email="update_payment_method"),
        "action_required": RetryPolicy(days=[], email="authentication_required"),
        "unknown": RetryPolicy(days=[1, 3]),  # soft, but capped
    }


def default_ladder() -> list[ConsequenceRule]:
    return [
        # most severe first; each rung holds at least a day before exhaustion at grace_days = 14
        ConsequenceRule(level="suspended", min_days=10),
        ConsequenceRule(level="limited", min_days=7),
        ConsequenceRule(level="full", min_days=0),
    ]


def _rung(i: int, rule: ConsequenceRule) -> str:
    return f"campaign.consequences[{i}], level {rule.level!r}, min_days {rule.min_days:g}"


def _unreachable_rung(ladder: list[ConsequenceRule], grace_days: float) -> str | None:
    """The first rung that can never hold before exhaustion, as a refusal message; else None.

    Every condition is monotone (days >=, amount >=), so trying each decline class, the
    amounts None / 0 / the rung's own min_amount_due / a very large one, and the days from
    the rung's min_days up to grace_days at which the ladder can change is enough.
    """
    for i, rule in enumerate(ladder):
        head = f"campaign.consequences[{i}] (level {rule.level!r}, min_days {rule.min_days:g}): can never hold"
        if rule.min_days >= grace_days:
            return f"{head}: the campaign is exhausted at grace_days = {grace_days:g}"
        days = sorted({rule.min_days, *(r.min_days for r in ladder if rule.min_days <= r.min_days < grace_days)})
        amounts = (None, 0, rule.min_amount_due, 10**18)
        winners: list[int] = []
        reachable = False
        for day in days:
            for cls_ in DECLINE_CLASSES:
                for amount in amounts:
                    won = first_match(ladder, day, cls_, amount)
                    if won == i:
                        reachable = True
                        break
                    if won is not None and won < i and won not in winners:
                        winners.append(won)
                if reachable:
                    break
            if reachable:
                break
        if not reachable:
            named = "; ".join(_rung(w, ladder[w]) for w in sorted(winners))
            if len(winners) == 1:
                return f"{head}: an earlier rung ({named}) always wins"
            return f"{head}: earlier rungs ({named}) always win"
    return None


class ProviderPolicy(BaseModel):
    model_config = {"extra": "forbid"}

    retries: Literal["provider", "engine", "off"]
    on_exhaustion: Literal["cancel", "mark_unpaid", "none"] = "cancel"


def default_providers() -> dict[str, ProviderPolicy]:
    return {
        "stripe": ProviderPolicy(retries="provider"),  # Smart Retries run; the engine observes
        "braintree": ProviderPolicy(retries="engine"),
        "fake": ProviderPolicy(retries="engine"),
    }


class CampaignSettings(BaseModel):
    model_config = {"extra": "forbid"}

    enabled: bool = True
    steps: list[StepSpec] = Field(default_factory=default_steps)
    grace_days: float = 14
    retries: dict[str, RetryPolicy] = Field(default_factory=default_retry_policies)
    consequences: list[ConsequenceRule] = Field(default_factory=default_ladder)
    providers: dict[str, ProviderPolicy] = Field(default_factory=default_providers)
    # Lateness (real seconds) that is the engine's own, never an outage: a busy worker or a
    # timer is late by seconds. Within it a due action is performed as on time (no catch-up
    # rule skips it); beyond it (or 1% of a day, whichever is longer) the catch-up rules of
    # dunning.journey apply.
    late_tolerance_seconds: float = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _cadence(self) -> CampaignSettings:
        if not self.steps:
            raise ValueError("campaign.steps = []: at least one step is required")
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if not _KEY.match(step.key):
                raise ValueError(
                    f"campaign.steps[{i}].key = {step.key!r}: must be lowercase letters, digits and _"
                )
            if step.key in seen:
                raise ValueError(f"campaign.steps[{i}].key = {step.key!r}: keys must be unique")
            seen.add(step.key)
            if i and step.after_days <= self.steps[i - 1].after_days:
                raise ValueError(
                    f"campaign.steps[{i}].after_days = {step.after_days:g}: must be strictly increasing "
                    f"(campaign.steps[{i - 1}].after_days = {self.steps[i - 1].after_days:g})"
                )
        last = self.steps[-1].after_days
        if self.grace_days < last:
            raise ValueError(
                f"campaign.grace_days = {self.grace_days:g}: must be >= the last step's after_days ({last:g})"
            )
        for cls_ in self.retries:
            if cls_ not in DECLINE_CLASSES:
                raise ValueError(f"campaign.retries.{cls_}: unknown decline class (known: {', '.join(DECLINE_CLASSES)})")
        for cls_, policy in self.retries.items():
            if policy.days != sorted(set(policy.days)) or any(d < 0 for d in policy.days):
                raise ValueError(
                    f"campaign.retries.{cls_}.days = {policy.days}: must be non-negative, strictly increasing"
                )
            if policy.days and policy.days[-1] > self.grace_days:
                raise ValueError(
                    f"campaign.retries.{cls_}.days = {policy.days}: a retry after grace_days ({self.grace_days:g}) never runs"
                )
        self.retries = {**default_retry_policies(), **self.retries}
        for name in self.providers:
            if name not in ("stripe", "braintree", "fake"):
                raise ValueError(f"campaign.providers.{name}: unknown provider (known: stripe, braintree, fake)")
        self.providers = {**default_providers(), **self.providers}
        if self.providers["braintree"].on_exhaustion == "mark_unpaid":
            raise ValueError(
                "campaign.providers.braintree.on_exhaustion = 'mark_unpaid': Braintree has no invoices to mark; use cancel or none"
            )
        if not self.consequences or not any(
            r.min_days == 0 and r.decline_class is None and r.min_amount_due is None for r in self.consequences
        ):
            raise ValueError(
                "campaign.consequences: needs a catch-all rung (min_days = 0, no other condition), e.g. level 'full'"
            )
        levels = [r.level for r in self.consequences]
        for i, level in enumerate(levels):
            if not _KEY.match(level):
                raise ValueError(f"campaign.consequences[{i}].level = {level!r}: must be lowercase letters, digits and _")
        # at grace_days = 0 the campaign is exhausted as it begins: no rung, not even the
        # required catch-all, can hold, so there is nothing to refuse a rung for
        if self.grace_days > 0 and (unreachable := _unreachable_rung(self.consequences, self.grace_days)):
            raise ValueError(unreachable)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUNNING_", env_nested_delimiter="__", extra="forbid")

    home: Path = Path(".dunning")
    database_url: str | None = None

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "dunning"
    temporal_tls: bool = False
    temporal_api_key: str | None = None

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_sender: str = "billing@example.com"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout: float = Field(default=10, gt=0)

    templates_dir: Path = BUILTIN_TEMPLATES
    day_seconds: float = Field(default=86400, gt=0)
    campaign: CampaignSettings = Field(default_factory=CampaignSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)  # the staged-rollout gate
    recompute: RecomputeSettings = Field(default_factory=RecomputeSettings)  # recompute and the drift sweep
    email: EmailSettings = Field(default_factory=EmailSettings)  # sender, links and plan names in emails

    ui_port: int = Field(default=8233, ge=1, le=65535)  # `dunning dev` only
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_token: str | None = None
    api_docs: Literal["token", "public", "off"] = "token"  # /openapi.json and /docs: behind the token, open, or none
    fake_webhook_secret: str | None = None
    stripe_webhook_secret: Annotated[list[str], NoDecode] = Field(default_factory=list)
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    braintree_merchant_id: str | None = None
    braintree_public_key: str | None = None
    braintree_private_key: str | None = None
    braintree_environment: str = "sandbox"
    braintree_api_base: str | None = None  # tests: http://127.0.0.1:PORT instead of the environment's host
    attention_message: str = Field(default=ATTENTION_MESSAGE, min_length=1, max_length=500)
    outbound_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbound_secret: str | None = None
    outbound_poll_seconds: float = Field(default=2.0, gt=0)  # how often the outbox deliverer looks
    # event-time bounds: refuse an event dated further ahead than the skew, or older than the horizon
    event_max_skew_seconds: float = Field(default=300, ge=0)
    event_horizon_days: float = Field(default=90, gt=0)
    inbox_park_after: int = Field(default=5, ge=1)  # failed dispatches before an inbox row is parked
    shutdown_grace_seconds: float = Field(default=20, ge=0)  # SIGTERM: finish or hand back in-flight work
    # worker sizing (docs/capacity.md): campaigns kept in memory between their workflow tasks
    # (a campaign evicted from the cache is replayed from its history when it next wakes),
    # activities run at once, and threads for the store's blocking calls
    worker_max_cached_workflows: int = Field(default=2000, ge=0)
    worker_max_concurrent_activities: int = Field(default=64, ge=1)
    worker_db_threads: int = Field(default=8, ge=1, le=256)

    @field_validator("campaign", mode="before")
    @classmethod
    def _campaign_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `campaign = false` in TOML
            return {"enabled": value}
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
            return {"enabled": value.lower() in {"true", "1"}}
        return value

    @field_validator("stripe_webhook_secret", "outbound_urls", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _outbound(self) -> Settings:
        for url in self.outbound_urls:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"outbound_urls = {url!r}: must be an http(s) URL")
        if self.outbound_urls and not self.outbound_secret:
            raise ValueError("outbound_secret (DUNNING_OUTBOUND_SECRET): required when outbound_urls is set")
        return self

    @model_validator(mode="after")
    def _templates_exist(self) -> Settings:
        used = [(f"campaign.steps[{i}].template", s.template) for i, s in enumerate(self.campaign.steps)]
        used += [(f"campaign.retries.{c}.email", p.email) for c, p in self.campaign.retries.items() if p.email]
        for key, template in used:
            if not _KEY.match(template) or not (self.templates_dir / f"{template}.txt.j2").is_file():
                raise ValueError(
                    f"{key} = {template!r}: no such template in {self.templates_dir} "
                    f"(known: {', '.join(known_templates(self.templates_dir)) or 'none'})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # --- derived values -------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'dunning.db').resolve()}"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox"

    def plan(self, provider: str = "fake") -> CampaignPlan:
        policy = self.campaign.providers.get(provider) or ProviderPolicy(retries="off", on_exhaustion="none")
        return CampaignPlan(
            steps=self.campaign.steps,
            grace_days=self.campaign.grace_days,
            day_seconds=self.day_seconds,
            retries_mode=policy.retries,
            retry_policies=self.campaign.retries,
            ladder=self.campaign.consequences,
            on_exhaustion=policy.on_exhaustion,
            outbound=bool(self.outbound_urls),
            late_tolerance_seconds=self.campaign.late_tolerance_seconds,
        )


def known_templates(directory: Path) -> list[str]:
    return sorted(p.name.removesuffix(".txt.j2") for p in directory.glob("*.txt.j2"))


def config_path() -> Path | None:
    explicit = os.environ.get("DUNNING_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"DUNNING_CONFIG = {explicit!r}: no such file")
        return path
    default = Path("dunning.toml")
    return default if default.is_file() else None


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(("campaign.", f"{loc}")):  # our own rules already name the key
            lines.append(msg)
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            lines.append(f"{loc or 'config'}{shown}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError with a readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None
    except ValueError as err:  # e.g. a TOML syntax error
        raise ConfigError(f"invalid configuration: {err}") from None
