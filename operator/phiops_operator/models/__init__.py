"""Typed models of the three custom resources: one source of truth for the CRD schemas."""
