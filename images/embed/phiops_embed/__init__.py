"""The phiops-embed image: documents -> chunks -> embeddings -> Milvus, and reading them back."""
