from __future__ import annotations

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings, _aliases, settings_config

PREFIX = "FEEDBACK_"


class FeedbackSettings(ServiceSettings):
    model_config = settings_config(PREFIX)

    service_name: str = "feedback"
    http_port: int = Field(default=8001, ge=0, le=65535)
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/feedback", validation_alias=_aliases(PREFIX, "DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_aliases(PREFIX, "KAFKA_BOOTSTRAP_SERVERS")
    )
    consumer_group: str = "feedback"
    # The HMAC key that turns NHS numbers into pseudonyms. The default is for development only;
    # production sets FEEDBACK_PSEUDONYM_KEY from a secret store. See README "Key rotation".
    pseudonym_key: SecretStr = SecretStr("dev-only-pseudonym-key-change-me")
    pseudonym_key_id: str = Field(default="dev-1", pattern=r"^[A-Za-z0-9._-]{1,40}$")
    batch_max_items: int = Field(default=500, ge=1, le=5000)
