"""Kopf's settings as the operator sets them: what becomes an Event, where state is kept."""

from __future__ import annotations

import logging

import kopf
from phiops_operator.config import OperatorConfig
from phiops_operator.handlers import startup


def test_no_log_message_is_posted_as_an_event() -> None:
    settings = kopf.OperatorSettings()
    startup.configure(settings, OperatorConfig())
    assert settings.posting.loggers is False  # no "Handler ... succeeded" Event per run
    assert settings.posting.enabled is True  # explicit kopf.event() calls still post
    assert settings.posting.level == logging.INFO
    assert settings.persistence.finalizer == "phiops.dev/cleanup"
