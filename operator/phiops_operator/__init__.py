"""phiops: a Kopf operator that turns Phi-3 into an industry expert."""

__version__ = "0.1.0"
GROUP = "phiops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
