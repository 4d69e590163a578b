"""MCCL: multi-grained compositional visual clue learning for intent recognition."""
