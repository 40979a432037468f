"""The audit trail: who touched which patient's record, encrypted, hash-chained and signed."""
