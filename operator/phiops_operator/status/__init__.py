"""PURE functions: observed children -> conditions and figures."""
