"""Kopf handlers: importing this package registers all of them."""

from phiops_operator.handlers import fine_tune_job, knowledge_base, phi_deployment, startup

__all__ = ["fine_tune_job", "knowledge_base", "phi_deployment", "startup"]
