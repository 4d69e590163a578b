"""Shipped label embeddings (see :func:`mccl_core.models.pki.shipped_label_embeddings`)."""
