"""Tests of the phiops-embed workload, on the real model and a real milvus-lite."""

import os

# Read by huggingface_hub at import time: these tests never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
