"""The [scheduler], [sms], [email], [webhook_channel] and [delivery] config sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_smartflow import shipped
from fhir_smartflow.config import ConfigError, load_settings

EXAMPLE_CONFIG = Path(str(shipped.locate(shipped.EXAMPLE_CONFIG)))


def test_example_config_documents_the_defaults():
    s = load_settings(EXAMPLE_CONFIG, env={})
    assert (s.delivery.quiet_hours_start, s.delivery.quiet_hours_end) == ("21:00", "08:00")
    assert s.delivery.rate_per_minute("sms") == 60 and s.delivery.rate_per_minute("portal") == 0
    assert s.scheduler.test_clock is False and s.email.security == "starttls"


def test_env_overrides_reach_the_new_sections():
    env = {
        "SMARTFLOW_SMS_ACCOUNT_SID": "AC1",
        "SMARTFLOW_WEBHOOK_CHANNEL_URL": "https://hooks.example.org/x",
        "SMARTFLOW_DELIVERY_QUIET_HOURS_CHANNELS": "sms,voice,email",
        "SMARTFLOW_DELIVERY_SMS_PER_MINUTE": "5",
        "SMARTFLOW_SCHEDULER_TEST_CLOCK": "true",
    }
    s = load_settings(None, env=env)
    assert s.sms.account_sid == "AC1" and s.webhook_channel.url.endswith("/x")
    assert s.delivery.quiet_hours_channels == ["sms", "voice", "email"] and s.delivery.sms_per_minute == 5
    assert s.scheduler.test_clock is True


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SMARTFLOW_DELIVERY_QUIET_HOURS_START": "9pm"}, "[delivery] quiet_hours_start"),
        ({"SMARTFLOW_EMAIL_SECURITY": "tls"}, "[email] security"),
        ({"SMARTFLOW_DELIVERY_PLUGINS": "fax"}, "[delivery] plugins"),
        ({"SMARTFLOW_DELIVERY_SMS_PER_MINUTE": "-1"}, "[delivery] sms_per_minute"),
        ({"SMARTFLOW_SMS_BASE_URL": "ftp://x"}, "[sms] base_url"),
        ({"SMARTFLOW_SCHEDULER_LOCK_TTL_SECONDS": "1"}, "[scheduler] lock_ttl_seconds"),
    ],
)
def test_bad_values_name_the_key(env, key):
    with pytest.raises(ConfigError) as err:
        load_settings(None, env=env)
    assert err.value.key == key
