"""PURE functions: (resource, operator config) -> child manifests. No API calls here."""
