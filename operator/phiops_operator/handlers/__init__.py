"""Kopf handlers: importing this package registers all of them (`watch` last: it reads
what the kinds' modules registered)."""

from phiops_operator.handlers import fine_tune_job, knowledge_base, phi_deployment, startup, watch

__all__ = ["fine_tune_job", "knowledge_base", "phi_deployment", "startup", "watch"]
