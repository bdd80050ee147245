"""What every channel refuses whatever the submission's shape, with the deployment's settings:
one spelling for the HTTP routes and the Kafka intake (the rule itself is ``domain.admission_refusal``)."""

from __future__ import annotations

from datetime import datetime, timezone

from services.feedback import domain
from services.feedback.settings import FeedbackSettings
from shared.reference import ReferenceData


def refusal(sub: domain.Submission, settings: FeedbackSettings, reference: ReferenceData,
            now: datetime | None = None) -> tuple[str, str] | None:
    """(field, why) ``sub`` is refused (an unknown provider, an implausible authored_at), or None."""
    window = domain.authored_window(now or datetime.now(timezone.utc), settings.authored_at_max_age_days,
                                    settings.authored_at_max_skew_s)
    return domain.admission_refusal(sub, reference, window)
